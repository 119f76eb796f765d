"""Where models run: device choice and CPU thread settings."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "set_threads"]


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when a device is present, else the CPU; ``cuda`` without one is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device '{name}' (use auto, cpu or cuda[:N])") from None


def set_threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise ValueError("--threads must be at least 1")
        torch.set_num_threads(n)
