"""How every ``flowdec`` command reports a failure: one line naming the file and the problem, exit 1."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from .signals import termination_signals

__all__ = ["EXIT_FAILURE", "Failure", "FlowdecGroup", "describe_os_error", "error_line", "one_line_message",
           "terminal_text"]

EXIT_FAILURE = 1  # click uses 2 for usage errors


def terminal_text(text: str) -> str:
    """``text`` with its control characters written out as escapes (``\\x1b``, ``\\n``).

    Messages quote what files say (a .fdc header's model name, a folder's file names): a forged file must
    not be able to move the cursor, retitle the terminal or split one error into several lines.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8, as Python holds it: the byte
        return f"\\x{code - 0xDC00:02x}"
    return repr(ch)[1:-1]


def error_line(text: str) -> str:
    """The line that reports a failure: ``flowdec: error:`` and ``text``, escaped by :func:`terminal_text`."""
    return f"flowdec: error: {terminal_text(text)}"


class Failure(click.ClickException):
    """A one-line failure (exit 1); usage errors stay click's (exit 2)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(error_line(self.format_message()), err=True)


def _failed_on_stdout(exc: OSError) -> bool:
    """Was ``exc`` raised by a write to file descriptor 1? A write to standard output (``> /dev/full``, a
    full disk under a redirection) fails with no file name; the stream it wrote to is a local of the frame
    that raised, whatever wraps it (click's echo, our block copy)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    for value in tb.tb_frame.f_locals.values():
        fileno = getattr(value, "fileno", None)
        if callable(fileno):
            with contextlib.suppress(Exception):
                if fileno() == 1:
                    return True
    return False


def describe_os_error(exc: OSError) -> str:
    """Disk full, permissions, missing folders: the file and the reason, without the traceback."""
    name = exc.filename or ("standard output" if _failed_on_stdout(exc) else None)
    return f"{str(name) + ': ' if name else ''}{exc.strerror or exc}"


def _last_line(message: str) -> str:
    """An error re-raised from a DataLoader worker carries the worker's traceback: keep its last line,
    without the exception's module and class name."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and "Error" in head else last


def one_line_message(exc: BaseException) -> str | None:
    """The one line that reports ``exc``: the package's own errors (:class:`FlowdecError`) and OS errors
    (disk full, permissions) by their message; None for anything unexpected (a bug: the caller says so)."""
    from .exceptions import FlowdecError
    from .fileio import OutputExistsError

    if isinstance(exc, OutputExistsError):  # in the command line's terms, not the library's
        return exc.describe("-f/--force")
    if isinstance(exc, FlowdecError):
        return _last_line(str(exc))
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        return describe_os_error(exc)
    if isinstance(exc, MemoryError):  # the machine's limit, not a bug: say what failed
        return f"out of memory ({exc})" if str(exc) else "out of memory"
    return None


class FlowdecGroup(click.Group):
    """Every ``flowdec`` command group: our own errors become one line (:func:`one_line_message`), anything
    unexpected one line plus a --debug hint; usage errors too are one line with the ``flowdec:`` prefix."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from .streams import tolerant_stderr

        tolerant_stderr()
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `flowdec` alone: the help, as click shows it
                exc.show()
                sys.exit(exc.exit_code)
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(error_line(exc.format_message()) + hint, err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("flowdec: aborted", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(rv if isinstance(rv, int) else 0)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:  # --version and --help print while the arguments are parsed, before invoke
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:  # `flowdec --version | true`: click itself would exit 1
            from .streams import exit_on_broken_pipe

            exit_on_broken_pipe()
            raise  # not reached: exit_on_broken_pipe ends the program

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with termination_signals():
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # `flowdec models | head -1`: the reader has what it wanted
            from .streams import exit_on_broken_pipe

            exit_on_broken_pipe()
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (Terminated): temp files are gone
            name = getattr(exc, "name", "")
            click.echo(f"flowdec: {'terminated by ' + name if name else 'interrupted'}", err=True)
            sys.exit(getattr(exc, "exit_code", 130))
        except Exception as exc:
            root = ctx.find_root()
            if isinstance(root.obj, dict) and root.obj.get("debug"):
                raise
            message = one_line_message(exc)
            if message is not None:
                raise Failure(message) from None
            raise Failure(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)") from None
