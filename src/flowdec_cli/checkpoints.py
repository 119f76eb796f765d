"""Reading and writing model weights without ever running code from a file.

Three formats reach us:

* the released NDAC ``weights.pth`` (audiotools ``BaseModel.save``): a zip-format ``torch.save`` whose
  pickle names only tensors and plain containers, so torch's ``weights_only`` loader reads it (after we
  refuse a pickle that names ``bytes`` or ``bytearray``, which that loader allows and which let a tiny file
  allocate gigabytes);
* the released FlowDec Lightning ``.ckpt``: its pickle also holds OmegaConf objects and callback state.
  ``weights_only`` refuses those, and a plain ``torch.load`` would import (and could execute) whatever the
  pickle names. We unpickle it with an allowlist instead: tensor rebuilders and plain containers resolve
  to the real thing (``bytes`` and ``bytearray`` only from data the file holds), every other global
  resolves to an inert stub, so nothing outside the allowlist is ever imported or called;
* our own model folders: ``config.json`` + ``model.safetensors``, the layout a Hugging Face hub repo holds.
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .exceptions import FlowdecError
from .fileio import atomic_write_bytes, parse_json, why_not_a_regular_file

__all__ = [
    "CheckpointError",
    "load_dac_weights",
    "load_lightning_state_dict",
    "save_model_folder",
    "load_model_folder",
    "require_finite",
    "state_mismatch",
    "require_weights_for",
    "weights_hash",
    "atomic_write_bytes",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(FlowdecError):
    """A weights file that cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------
# Restricted unpickling for Lightning checkpoints


class _InertStub:
    """Stands in for any class or function the allowlist does not name.

    It accepts every way pickle can build or fill an object and keeps nothing, so hyper-parameters,
    callback states and loop states load as harmless placeholders.
    """

    _flowdec_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<unloaded {self._flowdec_name}>"


def _stub_for(module: str, name: str) -> type:
    return type(f"Unloaded_{name}", (_InertStub,), {"_flowdec_name": f"{module}.{name}"})


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
# Containers only. ``str``, ``int``, ``float`` and ``complex`` are left to the stubs: pickles carry such
# values as data, and a call of ``str`` on a list that holds itself twice at every level (memo references)
# takes time and memory doubling with each level of a 1.5 KB file.
for _builtin in ("dict", "list", "set", "frozenset", "tuple", "bool", "slice"):
    _ALLOWED_GLOBALS[("builtins", _builtin)] = getattr(builtins, _builtin)
del _builtin


def _from_data_only(kind: type) -> Any:
    """``bytes`` / ``bytearray`` for the unpickler, built only from data the pickle carries: ``kind(n)``
    would make a 400-byte file allocate n bytes (a forged checkpoint asking for gigabytes)."""
    def build(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(f"{kind.__name__}({args[0]}) allocates memory the file does not hold; "
                                         "refused")
        return kind(*args)

    return build


for _kind in (bytes, bytearray):
    _ALLOWED_GLOBALS[("builtins", _kind.__name__)] = _from_data_only(_kind)
del _kind


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _stub_for(module, name)


class _RestrictedPickleModule:
    """The ``pickle_module`` handed to ``torch.load``: only our unpickler is reachable through it."""

    Unpickler = _RestrictedUnpickler
    __name__ = "flowdec_restricted_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _require_zip_torch_file(path: Path) -> None:
    if (problem := why_not_a_regular_file(path)) is not None:
        raise CheckpointError(f"{path}: {problem}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a model: neither a model folder nor a zip-format torch checkpoint "
                              "(a released weights.pth or .ckpt); a legacy or corrupt one, or another kind of file")


def load_lightning_state_dict(path: str | os.PathLike, ema: bool = True) -> dict[str, torch.Tensor]:
    """The EMA (default, as the official demo uses) or raw state dict of a FlowDec Lightning checkpoint."""
    path = Path(path)
    _require_zip_torch_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as exc:  # any malformed pickle or archive
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {first[:200]})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (top level is {type(ckpt).__name__})")
    key = "_pl_ema_state_dict" if ema else "state_dict"
    if key not in ckpt:
        if ema and "state_dict" in ckpt:
            raise CheckpointError(f"{path}: holds no EMA weights ('_pl_ema_state_dict'); "
                                  "load the raw weights explicitly (ema=False / --raw-weights)")
        raise CheckpointError(f"{path}: no '{key}' in checkpoint")
    state = ckpt[key]
    return _tensor_dict(state, path, key)


def _tensor_dict(state: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: '{what}' is not a dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: '{what}' entry {k!r} is not a tensor")
        if v.layout is not torch.strided:  # sparse weights failed as an uncaught NotImplementedError
            raise CheckpointError(f"{path}: weight {k} is a {v.layout} tensor; a weights file holds dense ones")
        held = v.untyped_storage().nbytes() // max(v.element_size(), 1)
        if v.numel() > held:  # a stride-0 view: 4 stored bytes standing for 2**28 weights (2 GB to check)
            raise CheckpointError(f"{path}: weight {k} claims {v.numel():,} values over {held:,} stored; a weights "
                                  "file stores each of its values")
        out[k] = v.detach()
    require_finite(out, path)
    return out


def require_finite(state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """A weight that is NaN or infinite turns every output into NaN, which a decoder then writes as full-scale
    noise or silence: refuse the file that holds one, naming the tensor, before anything is built on it."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: weight {name} holds NaN or infinite values")


_MAX_PICKLE_BYTES = 64 << 20  # a weights pickle names its tensors; their data lies beside it in the zip


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle of a torch zip, as bytes (nothing is unpickled); None if there is none or the zip cannot
    be read (torch's loader then says why). A pickle too large to scan is refused: unscanned, it could ask
    for what the scan refuses."""
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) > 1:  # a decoy scanned in the place of the pickle torch loads
                raise CheckpointError(f"{path}: refused: it holds {len(pickles)} pickles (a torch file holds one)")
            pkl = pickles[0] if pickles else None
            if pkl is None:
                return None
            if pkl.file_size > _MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path}: refused: its pickle is {pkl.file_size / 2**20:.0f} MB; a weights "
                                      f"file's is far smaller (at most {_MAX_PICKLE_BYTES >> 20} MB read)")
            return zf.read(pkl)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return None


def _is_lightning_checkpoint(path: Path) -> bool:
    """Does the torch zip's pickle carry Lightning's top-level keys?"""
    data = _pickle_bytes(path)
    return data is not None and (b"pytorch-lightning_version" in data or b"_pl_ema_state_dict" in data)


_SIZED_BUILDERS = {"bytes", "bytearray"}  # builtins whose call with a number allocates that many bytes


def _asks_for_sized_builder(data: bytes) -> bool:
    """Does a pickle name ``bytes`` or ``bytearray``? torch's ``weights_only`` loader allows both, and
    ``bytearray(3_000_000_000)`` in a 400-byte file makes it allocate 3 GB. NDAC weights never need them
    (bytes have their own opcodes), so naming them at all, as a GLOBAL or as the strings a STACK_GLOBAL
    takes, is refused. Read with ``pickletools``: nothing is unpickled."""
    import pickletools

    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name == "GLOBAL" and isinstance(arg, str) and arg.split(" ")[-1] in _SIZED_BUILDERS:
                return True
            if "UNICODE" in op.name and arg in _SIZED_BUILDERS:
                return True
    except (ValueError, EOFError):  # a malformed pickle: torch's own loader reports it
        return False
    return False


def _refusal(exc: Exception) -> str:
    """Why torch's safe loader refused a file, in one line, without torch's advice to load it unsafely."""
    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return (f"refused: not plain NDAC weights; its pickle asks for {m.group(1)}, which a weights file "
                "never needs (nothing in it was run)")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    if "weights_only" in text or "Weights only load failed" in first:
        return "refused: not plain NDAC weights (it holds objects a weights file never needs; nothing was run)"
    return f"cannot read NDAC weights ({type(exc).__name__}: {first[:200]})"


def load_dac_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and constructor kwargs of a descript-audio-codec / NDAC ``weights.pth``."""
    path = Path(path)
    _require_zip_torch_file(path)
    if _is_lightning_checkpoint(path):
        raise CheckpointError(f"{path}: a FlowDec postfilter checkpoint (Lightning .ckpt), not codec weights "
                              "(weights.pth); it cannot code audio alone: give a model folder or name "
                              "(e.g. flowdec-75m after `flowdec models fetch-official`)")
    data = _pickle_bytes(path)
    if data is not None and _asks_for_sized_builder(data):
        raise CheckpointError(f"{path}: refused: not plain NDAC weights; its pickle asks for bytes or bytearray "
                              "objects, which a weights file never needs (nothing in it was run)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: {_refusal(exc)}") from None
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"{path}: not a DAC weights file (no 'state_dict')")
    meta = blob.get("metadata") or {}
    kwargs = meta.get("kwargs") if isinstance(meta, dict) else None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: DAC weights carry no metadata['kwargs'] to build the model from")
    return _tensor_dict(blob["state_dict"], path, "state_dict"), dict(kwargs)


# --------------------------------------------------------------------------------------------------
# Our own format


def save_model_folder(folder: str | os.PathLike, config: dict[str, Any],
                      state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (contiguous CPU copies, original dtypes)."""
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return folder


def load_model_folder(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.exists():
            raise CheckpointError(f"{folder}: not a model folder (missing {p.name})")
        if (problem := why_not_a_regular_file(p)) is not None:
            raise CheckpointError(f"{p}: {problem}")
    try:
        config = parse_json(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: unreadable config ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: config is not a JSON object")
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{w_path}: unreadable safetensors ({exc})") from None
    for name, tensor in state.items():  # our folders hold float weights only; integers would be cast silently
        if not tensor.is_floating_point():
            raise CheckpointError(f"{w_path}: weight {name} is {str(tensor.dtype).removeprefix('torch.')}, "
                                  "not floating point")
    require_finite(state, w_path)
    return config, state


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str, what: str,
                   shown: int = 8) -> str | None:
    """One line naming how ``state`` (from ``source``) fails to fit a model whose own state is ``own`` (None:
    it fits): the count, then the first ``shown`` missing, unexpected or mis-shaped keys, whatever a foreign
    or other-sized file brings (a resize of every layer listed them all: 10,000 characters)."""
    problems = [f"missing {k} {list(v.shape)}" for k, v in own.items() if k not in state]
    problems += [f"unexpected {k} {list(v.shape)}" for k, v in state.items() if k not in own]
    problems += [f"shape of {k}: file {list(state[k].shape)}, model {list(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if not problems:
        return None
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return (f"{source}: weights do not fit the {what} ({len(problems)} problem{'s' if len(problems) > 1 else ''}): "
            + "; ".join(problems[:shown]) + more)


def require_weights_for(parameters: int, state: dict[str, torch.Tensor], source: str) -> None:
    """A model is built from its config before its weights are checked against it, so a config must not
    describe far more weights than the file beside it holds: a few hundred forged bytes of config next to
    an empty weights file asked for gigabytes. ``parameters``: the config's own estimate (the big layers)."""
    held = sum(int(t.numel()) for t in state.values())
    if parameters > 4 * held + (1 << 20):
        raise CheckpointError(f"{source}: its config describes about {parameters:.3g} weights, but its weights "
                              f"file holds {held}; the two do not belong together")


def weights_hash(state_dict: dict[str, torch.Tensor], length: int = 16) -> str:
    """A content hash of a state dict that does not depend on the file format it came from."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]
