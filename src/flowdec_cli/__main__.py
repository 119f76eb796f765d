"""``python -m flowdec_cli`` runs the ``flowdec`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="flowdec")
