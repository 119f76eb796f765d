"""What both trainers share: torchrun/DDP setup, mixed precision, checkpoints, logging.

Checkpoints are folders (our own format; nothing is pickled):

    RUN/checkpoints/step-00012000/
        model/config.json + model/model.safetensors     a component folder (ndac or postfilter, raw weights)
        ema/config.json + ema/model.safetensors         postfilter only: the EMA weights
        optimizer.safetensors                           optimizer state tensors ("state/<param>/<name>")
        trainer.json                                    step, epoch, optimizer hyper-parameters, scheduler,
                                                        grad scaler, the training config
    RUN/checkpoints/latest                              name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, so a crash never leaves
a half-written "latest".
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..checkpoints import CheckpointError, atomic_write_bytes, load_model_folder, save_model_folder
from ..exceptions import FlowdecError
from ..fileio import parse_json
from ..numeric import is_integer

__all__ = [
    "TrainingError",
    "DistEnv",
    "setup_distributed",
    "cleanup_distributed",
    "amp_settings",
    "first_problem",
    "WeightsMisfit",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "is_run_or_checkpoint",
    "RunLogger",
    "optimizer_state_to_files",
    "optimizer_state_from_files",
]

CHECKPOINT_VERSION = 1


class TrainingError(FlowdecError):
    """A training run that cannot start or continue; the message says why."""


class WeightsMisfit(TrainingError):
    """A checkpoint's weights that do not fit the model this config builds (another size): on a resume the
    [model] settings that changed since the run began are the cause to name."""


# --------------------------------------------------------------------------------------------------
# Distributed


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - immutable, shared safely
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()


def setup_distributed(device: str | None = "auto") -> DistEnv:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on CPU).

    Each process uses ``cuda:LOCAL_RANK`` when CUDA is used. Without torchrun: one process on ``device``.
    """
    from ..runtime import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    name = (device or "auto").lower()
    if world <= 1:
        try:
            return DistEnv(device=resolve_device(name))
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    use_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for, but no CUDA device is available")
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", rank=rank, world_size=world)
        owns = True
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=dev,
                   owns_group=owns)


def cleanup_distributed(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when running distributed (else ``module`` itself).

    The models' buffers are constants, so they are not re-broadcast before every forward.
    """
    if not env.distributed:
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    dev = env.device
    return DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None, **no_sync)


def amp_settings(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed). Mixed precision is used on CUDA only."""
    if device.type != "cuda" or mode == "none":
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def make_grad_scaler(enabled: bool) -> Any:
    return torch.amp.GradScaler("cuda", enabled=enabled)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device


# --------------------------------------------------------------------------------------------------
# Optimizer state without pickle


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return {"__float__": repr(value)}
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return {"__tensor__": value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
    raise TrainingError(f"cannot store {where} value of type {type(value).__name__} in a checkpoint")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__float__" in value:
            return float(value["__float__"])
        if "__tensor__" in value:
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def optimizer_state_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{pid}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = _jsonable(value, f"optimizer state {name}")
    meta = {"param_groups": _jsonable(state["param_groups"], "optimizer param_groups"), "scalars": scalars}
    return tensors, meta


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split("/", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(_from_json(entries))
    groups = _from_json(meta["param_groups"])
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------------------------
# Checkpoint folders


def _step_name(step: int) -> str:
    return f"step-{step:08d}"


def first_problem(exc: BaseException) -> str:
    """The first item of a strict-load error (``checkpoints.state_mismatch``'s "(N problems): a; b; ..." or
    torch's own list), for one-line messages."""
    text = str(exc)
    counted = re.search(r"\((\d+) problems?\): ", text)
    if counted:
        first, total = text[counted.end():].split("; ")[0], int(counted.group(1))
        return first + (f" (and {total - 1} more)" if total > 1 else "")
    _, sep, rest = text.partition("): ")
    items = rest.split("; ") if sep else [text]
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return items[0][:200] + more


def save_checkpoint(run_dir: Path, step: int, *, model_config: dict[str, Any], model_state: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any],
                    ema_state: dict[str, torch.Tensor] | None = None, keep: int = 0) -> Path:
    """Write a complete checkpoint folder for ``step``, update ``latest``, prune old ones (``keep`` > 0)."""
    from safetensors.torch import save

    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / _step_name(step)
    tmp = ckpt_root / f".{_step_name(step)}.part"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model_folder(tmp / "model", model_config, model_state)
    if ema_state is not None:
        save_model_folder(tmp / "ema", model_config, ema_state)
    tensors, meta = optimizer_state_to_files(optimizer.state_dict())
    atomic_write_bytes(tmp / "optimizer.safetensors", save(tensors, metadata={"format": "pt"}))
    body = {"version": CHECKPOINT_VERSION, "step": step, "optimizer": meta,
            **{k: _jsonable(v, k) for k, v in trainer_state.items()}}
    atomic_write_bytes(tmp / "trainer.json", (json.dumps(body, indent=1) + "\n").encode())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(ckpt_root / "latest", (final.name + "\n").encode())
    if keep > 0:
        done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def is_run_or_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run folder or one of its checkpoints (what :func:`find_checkpoint`
    takes), rather than a model or component folder."""
    path = Path(path)
    return path.is_dir() and ((path / "trainer.json").is_file() or (path / "checkpoints").is_dir())


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder meant by ``path``: a checkpoint folder itself, or a run folder (its latest)."""
    path = Path(path)
    if (path / "trainer.json").is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = root / "latest"
    if latest.is_file():
        cand = root / latest.read_text().strip()
        if (cand / "trainer.json").is_file():
            return cand
    done = sorted(p for p in root.glob("step-*") if (p / "trainer.json").is_file()) if root.is_dir() else []
    if done:
        return done[-1]
    raise TrainingError(f"{path}: no checkpoint found (expected a run folder or a checkpoint folder)")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"dir", "trainer", "model_config", "model_state", "ema_state", "optimizer"}`` of a checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt = find_checkpoint(path)
    try:
        trainer = parse_json((ckpt / "trainer.json").read_text())
        model_config, model_state = load_model_folder(ckpt / "model")
        ema_state = load_model_folder(ckpt / "ema")[1] if (ckpt / "ema").is_dir() else None
        opt_tensors = load_file(str(ckpt / "optimizer.safetensors"))
    except (OSError, ValueError, CheckpointError, SafetensorError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrainingError(f"{ckpt}: unreadable checkpoint ({text}); resume from an earlier one with "
                            "--resume-from CHECKPOINT") from None
    version = trainer.get("version", 0) if isinstance(trainer, dict) else None
    step = trainer.get("step") if isinstance(trainer, dict) else None
    if not is_integer(version) or not isinstance(trainer.get("optimizer"), dict) \
            or not (is_integer(step) and step >= 0):
        raise TrainingError(f"{ckpt}: unreadable checkpoint (trainer.json is not a record of a flowdec run: a "
                            "version, a step and an optimizer state); resume from an earlier one with "
                            "--resume-from CHECKPOINT")
    if version > CHECKPOINT_VERSION:
        raise TrainingError(f"{ckpt}: checkpoint version {version} is newer than this flowdec")
    try:
        optimizer = optimizer_state_from_files(opt_tensors, trainer["optimizer"])
        record = _from_json(trainer)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"{ckpt}: unreadable checkpoint (trainer.json: {type(exc).__name__} {exc}); "
                            "resume from an earlier one with --resume-from CHECKPOINT") from None
    return {"dir": ckpt, "trainer": record, "model_config": model_config, "model_state": model_state,
            "ema_state": ema_state, "optimizer": optimizer}


# --------------------------------------------------------------------------------------------------
# Logging


class RunLogger:
    """Metrics to ``RUN/metrics.csv`` (columns step, time, split, name, value) and TensorBoard if installed.

    Only the main process writes. On resume, rows after the resumed step are dropped first, so a run that
    died after its last checkpoint does not log those steps twice; a fresh run starts the file anew (one
    that died before its first checkpoint left its rows there).
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self.tb = None
        self.start = time.time()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.reader(f)]
            keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= resume_step] if rows else []
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(keep)
        new = resume_step is None or not self.path.is_file() or self.path.stat().st_size == 0
        self._file = open(self.path, "w" if new else "a", newline="")  # noqa: SIM115 - closed by close()
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "time", "split", "name", "value"])
            self._file.flush()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed (or broken): the CSV is enough
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = round(time.time() - self.start, 3)
        for name, value in values.items():
            self._csv.writerow([step, now, split, name, f"{float(value):.8g}"])
            if self.tb is not None:
                self.tb.add_scalar(f"{split}/{name}", float(value), step)
        self._file.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                disable=True if not enabled else None, leave=True)


def param_list(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def mean_dict(items: Iterable[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for d in items:
        for k, v in d.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}
