"""The training loop both stages share: epochs over a resumable sampler, logging, validation, checkpoints.

A subclass builds its model, optimizer and data in :meth:`Trainer.build`, does one optimisation step in
:meth:`Trainer.train_step`, and evaluates in :meth:`Trainer.validate`. The loop here:

* iterates epochs of an :class:`~flowdec_cli.training.data.EpochSampler`; a resumed run restarts inside its
  epoch by skipping the batches it already did (no data is loaded for them);
* reseeds torch's global RNG every step from ``(seed, step, rank)`` so that anything random inside the
  model (quantizer dropout) is the same in a resumed run as in an uninterrupted one;
* averages logged values over processes, writes them (main process only), updates the bar;
* validates every ``val_every`` steps and checkpoints every ``checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..signals import signals_deferred, signals_ignored
from .common import (
    DistEnv,
    RunLogger,
    TrainingError,
    WeightsMisfit,
    amp_settings,
    cleanup_distributed,
    load_checkpoint,
    make_grad_scaler,
    progress_bar,
    save_checkpoint,
    setup_distributed,
    write_json,
)
from .config import config_to_dict
from .data import DataError, EpochSampler, mix_seed

__all__ = ["Trainer"]


class Trainer:
    name = "train"

    def __init__(self, config: Any, device: str = "auto", resume: bool | str = False,
                 max_steps: int | None = None, out_dir: str | Path | None = None, quiet: bool = False) -> None:
        self.config = config
        if max_steps is not None:
            config.train.max_steps = int(max_steps)
        if out_dir is not None:
            config.train.out_dir = str(out_dir)
        self.run_dir = Path(config.train.out_dir)
        self.device_name = device
        self.resume = resume
        self.quiet = quiet
        self.step = 0
        self.progress = 0.0  # the share of the run's budget used before the current step (see _budget_used)
        self.env = DistEnv()
        self.history: list[dict[str, float]] = []  # logged training values (main process), for callers/tests
        self.last_validation: dict[str, float] = {}

    # -- to implement ---------------------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: Any, log: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        return {}

    def checkpoint_payload(self) -> dict[str, Any]:
        """model_config, model_state, optimizer, ema_state (optional), extra trainer state."""
        raise NotImplementedError

    def restore(self, ckpt: dict[str, Any]) -> None:
        raise NotImplementedError

    def init_weights(self, source: Path) -> None:
        """Load the model's weights (not the optimizer's state) from ``source`` (``train.init_from``)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called on the main process after the last step (exports)."""

    # -- the loop -------------------------------------------------------------------------------------
    @property
    def local_batch(self) -> int:
        batch = self.config.data.batch_size
        if batch % self.env.world_size:
            raise TrainingError(f"data.batch_size {batch} is not divisible by the {self.env.world_size} "
                                "processes (it is the global batch)")
        return batch // self.env.world_size

    def make_sampler(self, dataset: Any) -> EpochSampler:
        return EpochSampler(dataset, self.env.world_size, self.env.rank, shuffle=True,
                            seed=self.config.train.seed, drop_last=True)

    def run(self) -> dict[str, float]:
        """Train to ``train.max_steps``; returns the last validation figures (if any)."""
        self.env = setup_distributed(self.device_name)
        try:
            return self._run()
        finally:
            self._stop_loader_workers()
            cleanup_distributed(self.env)

    def _stop_loader_workers(self) -> None:
        """Shut the data loader's persistent workers down when the run ends. They ignore stop signals (the
        main process ends the run), so left to Python's exit, whose multiprocessing sends them SIGTERM and
        waits, a trainer still referenced at exit (``trainer = train_ndac(...)`` in a script) hung it."""
        loader = getattr(self, "loader", None)
        workers = getattr(loader, "_iterator", None)
        if workers is not None and hasattr(workers, "_shutdown_workers"):
            workers._shutdown_workers()
            loader._iterator = None  # type: ignore[union-attr]  # a later iteration starts new ones

    def _run(self) -> dict[str, float]:
        env, cfg = self.env, self.config
        if not self.resume and (self.run_dir / "checkpoints" / "latest").is_file():
            # a fresh run here would overwrite that run's checkpoints, append to its metrics and prune it
            raise TrainingError(f"{self.run_dir}: holds the checkpoints of an earlier run; --resume continues "
                                "it, or give another --out (or remove the folder)")
        if cfg.train.tf32 and env.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp_dtype, use_scaler = amp_settings(cfg.train.amp, env.device)
        self.scaler = make_grad_scaler(use_scaler)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every process
        self.build()
        ckpt = None
        if self.resume:
            source = self.run_dir if self.resume is True else Path(str(self.resume))
            ckpt = load_checkpoint(source)
            changed = settings_changed(ckpt["trainer"], config_to_dict(cfg), env.world_size)
            try:
                self.restore(ckpt)
            except WeightsMisfit as exc:
                resized = [c for c in changed if c.startswith("model.")]
                if not resized:
                    raise
                raise TrainingError(f"{exc}; the run was trained with other model settings ({'; '.join(resized)}: "
                                    "the run's -> this config's): resume with the run's own [model] values, or "
                                    "train the new ones in a new run") from None
            self.step = int(ckpt["trainer"]["step"])
            if ckpt["trainer"].get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(ckpt["trainer"]["scaler"])
            if changed and env.is_main and not self.quiet:
                self.say(f"resuming step {self.step} with settings changed since that checkpoint: "
                         + "; ".join(changed))
        elif cfg.train.init_from:
            self.init_weights(Path(cfg.train.init_from))
        self._check_batches()  # before the run folder is made: a run that cannot start leaves nothing
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", {"kind": cfg.kind, **config_to_dict(cfg)})
        self.logger = RunLogger(self.run_dir, env.is_main, cfg.train.tensorboard,
                                resume_step=self.step if ckpt is not None else None)
        try:
            self._loop()
        finally:
            self.logger.close()
        return self.last_validation

    def _check_batches(self) -> None:
        if len(self.sampler.inner) // self.local_batch < 1:
            raise TrainingError(f"the training set yields no full batch of {self.config.data.batch_size} "
                                f"({len(self.sampler.inner) * self.env.world_size} items)")

    def _loop(self) -> None:
        env, tc = self.env, self.config.train
        per_epoch = len(self.sampler.inner) // self.local_batch
        epoch, in_epoch = divmod(self.step, per_epoch)
        bar = progress_bar(env.is_main and tc.progress and not self.quiet, tc.max_steps, self.step, self.name)
        saved_at = self.step if self.resume else -1
        logged: list[dict[str, torch.Tensor]] = []
        t_log, steps_since = time.perf_counter(), 0
        t_start, out_of_time = t_log, False
        try:
            while self.step < tc.max_steps and not out_of_time:
                self.sampler.set_epoch(epoch, skip=in_epoch * self.local_batch)
                for batch in self.loader:
                    self.progress, out_of_time = self._budget_used(t_start)
                    if out_of_time:
                        break
                    torch.manual_seed(mix_seed(tc.seed, self.step, env.rank))
                    log_now = (bool(tc.log_every) and (self.step + 1) % tc.log_every == 0) \
                        or self.step + 1 == tc.max_steps
                    with signals_deferred():  # a Ctrl-C lands between steps, never inside one
                        values = self.train_step(batch, log_now)
                        self.step += 1
                    steps_since += 1
                    logged.append(values)
                    bar.update(1)
                    if log_now:
                        means = self._reduce(logged)
                        dt = time.perf_counter() - t_log
                        means["steps_per_s"] = steps_since / dt if dt > 0 else 0.0
                        logged, t_log, steps_since = [], time.perf_counter(), 0
                        if not all(math.isfinite(v) for k, v in means.items() if k.startswith("loss")):
                            raise TrainingError(f"the loss is not finite at step {self.step}; lower optim.lr or "
                                                "resume from an earlier checkpoint")
                        if env.is_main:
                            self.logger.log(self.step, "train", means)
                            self.history.append({"step": self.step, **means})
                            bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4g}")
                    if tc.val_every and self.step % tc.val_every == 0:
                        self._validate()
                    if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                        self._save()
                        saved_at = self.step
                    if self.step >= tc.max_steps:
                        break
                epoch, in_epoch = epoch + 1, 0
        except KeyboardInterrupt:
            # Ctrl-C (or `timeout --signal=INT`) is the normal way to end a run on a time budget: keep the
            # steps done since the last checkpoint.
            bar.close()
            self._keep_steps(saved_at, "interrupted")
            raise
        except DataError:
            # training files are read when a batch first needs them, so a bad one can end a run hours in;
            # the failed batch was never stepped on, so the weights are those of the last step: keep them
            bar.close()
            self._keep_steps(saved_at, "stopped by a training file it cannot read")
            raise
        finally:
            bar.close()
        if out_of_time and env.is_main and not self.quiet:
            self.say(f"time budget of {tc.max_seconds:g} s reached at step {self.step}")
        if saved_at != self.step:
            self._save()
        if env.is_main:
            self.finish()
        env.barrier()

    def say(self, text: str) -> None:
        """A message of this run on standard error, ``flowdec: ndac: ...`` as every message of flowdec starts."""
        print(f"flowdec: {self.name}: {text}", file=sys.stderr)

    def note_no_validation(self, count: int) -> None:
        """Say so when ``train.val_every`` asks for validation that has no files to run on (a small data
        folder whose split gave none, an empty validation list): it would otherwise never happen, unsaid."""
        if count == 0 and self.config.train.val_every and self.env.is_main and not self.quiet:
            self.say("no validation files (data.validation is empty, or its split of the training "
                     "files gave none); validation is off")

    def apply_optimizer_settings(self) -> None:
        """After a resume loaded the checkpoint's optimiser: the config's betas, eps and weight decay, which
        ``load_state_dict`` would otherwise put back as they were, while the run reports them as changed.
        The moments stay; the rate is each trainer's (a schedule's, or the config's)."""
        oc = self.config.optim
        for group in self.optimizer.param_groups:
            group["betas"] = tuple(oc.betas)
            group["eps"] = oc.eps
            group["weight_decay"] = oc.weight_decay

    def _keep_steps(self, saved_at: int, why: str) -> None:
        """Save the steps done since the last checkpoint when a run ends early. Under DDP every rank stops
        at its own point, so no collective save is attempted there; the last periodic checkpoint stands."""
        if self.env.world_size == 1 and saved_at != self.step and self.step > 0:
            if not self.quiet:
                self.say(f"{why} at step {self.step}; saving a checkpoint (Ctrl-C is ignored "
                         "until it is written)")
            with signals_ignored():  # a second Ctrl-C during the save would leave nothing to resume from
                self._save()
            if not self.quiet:
                self.say(f"checkpoint saved in {self.run_dir / 'checkpoints'} (continue with "
                         "--resume)")

    def _budget_used(self, t_start: float) -> tuple[float, bool]:
        """How much of the run's budget is used before the next step, from 0 to 1 (the steps of
        ``train.max_steps``, or this process's seconds of ``train.max_seconds``, whichever is further), and
        whether the time is up. Under torchrun the processes' clocks are averaged, so that every replica
        takes the same learning rate and stops at the same step."""
        tc = self.config.train
        used = self.step / tc.max_steps if tc.max_steps else 1.0
        if tc.max_seconds is None:
            return min(used, 1.0), False
        elapsed = torch.tensor([time.perf_counter() - t_start], dtype=torch.float64)
        elapsed_s = float(self.env.all_reduce_sum(elapsed).cpu()[0]) / self.env.world_size
        return min(max(used, elapsed_s / tc.max_seconds), 1.0), elapsed_s >= tc.max_seconds

    def _reduce(self, logged: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        keys = sorted(logged[-1])  # the last step logs everything; earlier ones at least the losses
        means = [torch.stack([d[k].detach().float().reshape(()).cpu() for d in logged if k in d]).mean()
                 for k in keys]
        sums = self.env.all_reduce_sum(torch.stack(means).to(self.env.device))
        return {k: float(v) / self.env.world_size for k, v in zip(keys, sums.cpu())}

    def _validate(self) -> None:
        values = self.validate()
        if values:
            self.last_validation = values
            if self.env.is_main:
                self.logger.log(self.step, "validation", values)
                if not self.quiet and self.config.train.progress:
                    from tqdm import tqdm

                    tqdm.write(f"flowdec: {self.name}: step {self.step}: "  # among the run's other messages
                               + ", ".join(f"{k} {v:.4g}" for k, v in values.items()), file=sys.stderr)

    def _save(self) -> None:
        payload = self.checkpoint_payload()
        if self.env.is_main:
            extra = payload.get("trainer_state", {})
            state = {"kind": self.config.kind, "world_size": self.env.world_size,
                     "batch_size": self.config.data.batch_size,
                     "config": config_to_dict(self.config),
                     "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None, **extra}
            save_checkpoint(self.run_dir, self.step, model_config=payload["model_config"],
                            model_state=payload["model_state"], optimizer=payload["optimizer"],
                            trainer_state=state, ema_state=payload.get("ema_state"),
                            keep=self.config.train.keep_checkpoints)
        self.env.barrier()

    # -- helpers ----------------------------------------------------------------------------------------
    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return torch.autocast(self.env.device.type, enabled=False)
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def backward_and_step(self, loss: torch.Tensor, params: list[torch.nn.Parameter], clip: float | None,
                          log: bool) -> torch.Tensor | None:
        """Backward (scaled when fp16), unscale, optional clipping, optimizer step; the grad norm when
        clipped or logged."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if clip or log:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return grad_norm


#: the settings that decide which items make up each batch: changed on resume, the run goes on from its step
#: but no longer draws the batches an uninterrupted run would have drawn
DATA_ORDER_KEYS = ("data.train", "data.validation_fraction", "data.split_salt", "data.batch_size",
                   "data.segment_seconds", "train.seed", "world_size")


#: settings of the loop's bookkeeping, expected to change on resume (a longer run, another folder)
RUN_CONTROL_KEYS = ("train.max_steps", "train.max_seconds", "train.out_dir", "train.init_from", "train.progress",
                    "train.tensorboard", "train.log_every", "train.val_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "data.num_workers", "data.prefetch_factor")


def settings_changed(trainer_state: dict[str, Any], config: dict[str, Any], world_size: int) -> list[str]:
    """What differs between a checkpoint's recorded config (``trainer_state``) and the config a run resumes
    it with, as ``section.key old -> new`` (a resumed run may change them: a lower rate, another batch size
    on a bigger machine), and whether that changes the data order. Empty where the checkpoint recorded no
    config."""
    before = trainer_state.get("config")
    if not isinstance(before, dict):
        return []
    flat_before = {f"{section}.{key}": value for section, keys in before.items() if isinstance(keys, dict)
                   for key, value in keys.items()}
    flat_now = {f"{section}.{key}": value for section, keys in config.items() if isinstance(keys, dict)
                for key, value in keys.items()}
    flat_before["world_size"] = trainer_state.get("world_size", world_size)
    flat_now["world_size"] = world_size
    keys = [k for k in flat_now if k in flat_before and flat_before[k] != flat_now[k] and k not in RUN_CONTROL_KEYS]
    out = [f"{k} {flat_before[k]!r} -> {flat_now[k]!r}" for k in keys]
    if any(k in DATA_ORDER_KEYS for k in keys):
        out.append("its batches from here on are not the ones an uninterrupted run would have drawn")
    return out


def dataclass_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)

