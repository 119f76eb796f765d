"""Where models run: device choice and CPU thread settings."""

from __future__ import annotations

from typing import Any

import torch

from .exceptions import FlowdecError
from .numeric import MAX_THREADS

__all__ = ["DeviceError", "resolve_device", "set_threads"]


class DeviceError(FlowdecError, ValueError):
    """A device that cannot run models here. Also a ValueError, which callers caught before it had a class."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks CUDA when a device is present, else the CPU. A device that is not there is
    refused here, before any weights load: torch would fail only when the model moves onto it, after
    seconds of loading, or with an assertion instead of a reason."""
    if isinstance(name, torch.device):
        device = name
    elif name is None or isinstance(name, str):
        text = (name or "auto").strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(text)
        except RuntimeError:
            raise DeviceError(f"unknown device '{name}' (use auto, cpu or cuda[:N])") from None
    else:
        raise DeviceError(f"a device is a name such as 'cpu' or 'cuda:0', or a torch.device; got "
                          f"{type(name).__name__}")
    _check_available(device)
    return device


def _check_available(device: torch.device) -> None:
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{device}' was asked for, but no CUDA device is available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise DeviceError(f"device '{device}' was asked for, but the CUDA devices here are {have}")
        return
    # other back ends (mps, xpu) say themselves whether they are usable; one without a check is not supported
    backend: Any = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if not callable(available) or not available():
        raise DeviceError(f"device '{device}' is not available here (use auto, cpu or cuda[:N])")




def set_threads(n: int | None) -> None:
    if n is not None:
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"--threads must be from 1 to {MAX_THREADS}, got {n}")
        torch.set_num_threads(n)
