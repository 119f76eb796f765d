"""The example training configs of the repository's ``configs/`` folder, from an installed package too.

A wheel carries them as the package ``flowdec_cli.configs`` (``pyproject.toml`` maps ``configs/`` there); a
source checkout run in place reads ``configs/`` itself. ``flowdec train init-config NAME`` writes one out.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ..exceptions import FlowdecError

__all__ = ["PresetError", "preset_names", "preset_text"]


class PresetError(FlowdecError):
    """An unknown preset, or none shipped with this installation."""


def _sources() -> dict[str, str]:
    """Preset name -> TOML text."""
    found: dict[str, str] = {}
    try:
        root = importlib.resources.files("flowdec_cli.configs")
        for entry in root.iterdir():
            if entry.name.endswith(".toml"):
                found[entry.name[:-5]] = entry.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    if not found:  # a source checkout used without installing: src/flowdec_cli/training -> configs/
        checkout = Path(__file__).resolve().parents[3] / "configs"
        if checkout.is_dir():
            found = {p.stem: p.read_text(encoding="utf-8") for p in sorted(checkout.glob("*.toml"))}
    return found


def preset_names() -> list[str]:
    return sorted(_sources())


def preset_text(name: str) -> str:
    sources = _sources()
    key = name[:-5] if name.endswith(".toml") else name
    if key not in sources:
        if not sources:
            raise PresetError("no training configs ship with this installation")
        raise PresetError(f"unknown config '{name}'; choose from {', '.join(sorted(sources))}")
    return sources[key]
