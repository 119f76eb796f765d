"""Stage 2: the flow-matching postfilter, trained on (clean, coded) pairs.

Per step (official joint conditional flow matching): Y = Phi(y) and X = Phi(x) with y's peak as the
normalisation of both; per example t ~ U[0, 1) and complex Gaussian eps; x_t = t X + (1 - t)(Y + sigma_y eps);
target u = X - Y - sigma_y eps; loss = batch mean of the per-example mean |v(x_t, Y, t) - u|^2 (examples
with a NaN loss dropped). Adam (lr 1e-4, no schedule), an EMA (decay 0.999, every step from step 0) of all
weights kept beside the raw ones; validation enhances whole validation files with the EMA weights at NFE 6
(midpoint) and reports SI-SDR and log-spectral MSE (and the coded input's SI-SDR for comparison).

Each example's t and eps come from a generator seeded by the data item (seed, epoch, index), so one
process with batch 2B and two processes with batch B draw the same noise for the same examples.

The run folder ends up with ``postfilter/`` (a component folder with the EMA weights).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import CheckpointError, load_model_folder
from ..evaluation.metrics import si_sdr
from ..features import num_frames
from ..pitch import frame_track, pitch_layout, steps_of_signal
from ..postfilter import Postfilter
from .base import Trainer
from .common import TrainingError, WeightsMisfit, first_problem, param_list, wrap_ddp
from .config import PostfilterTrainConfig
from .data import EvalDataset, PairDataset, make_loader, mix_seed, read_pairs
from .losses import flow_matching_loss, flow_matching_targets, log_spectral_mse, with_coded_phase
from .prepare import gaussian_smooth, read_sigma_file, stale_sigma_warning, unusable_sigma

__all__ = ["PostfilterTrainer", "train_postfilter", "sigma_y_from_config", "build_postfilter"]


def sigma_y_from_config(config: PostfilterTrainConfig) -> tuple[torch.Tensor, float]:
    """(sigma_y, beta) for the model: a [F, 1] float64 curve (per band, smoothed) or a 0-dim value."""
    sc, mc = config.sigma, config.model
    freqs = mc.n_fft // 2 + 1
    beta = mc.beta
    estimate = read_sigma_file(sc.file) if sc.file else None

    def positive(field: str, value: Any) -> float:
        """A value of the sigma file that the model divides by: NaN there trains NaN weights."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if unusable_sigma(number).size:
            raise TrainingError(f"{sc.file}: {field} is {value!r}, not a positive number; run estimate-sigma "
                                "again (on pairs that are not silent)")
        return number

    if estimate is not None and sc.beta_from_file:
        beta = positive("beta", estimate.get("beta"))
    if sc.mode == "perband":
        assert estimate is not None
        try:
            curve = np.asarray(estimate.get("sigma_y_perband") or [], dtype=np.float64)
        except (TypeError, ValueError):
            curve = np.zeros(0)
        if curve.shape != (freqs,):
            raise TrainingError(f"{sc.file}: holds no per-band sigma_y of {freqs} bands (got shape "
                                f"{curve.shape}); run estimate-sigma again with this config's n_fft")
        bad = unusable_sigma(curve)
        if bad.size:
            positive(f"sigma_y_perband[{bad[0]}]", float(curve[bad[0]]))
        smooth = gaussian_smooth(curve, sc.smoothing_bins) if sc.smoothing_bins > 0 else curve
        return torch.from_numpy(smooth * sc.factor).reshape(freqs, 1), beta
    value = positive("sigma_y", estimate.get("sigma_y")) if estimate is not None else sc.value
    return torch.full((freqs, 1), value * sc.factor, dtype=torch.float64), beta


def build_postfilter(config: PostfilterTrainConfig) -> Postfilter:
    mc = config.model
    sigma_y, beta = sigma_y_from_config(config)
    framewise = {"dim": mc.dim, "intermediate_dim": mc.intermediate_dim, "num_blocks": mc.num_blocks,
                 "kernel_size": mc.kernel_size, "fourier_size": mc.fourier_size,
                 "context_dilation": mc.context_dilation, "spectral_channels": mc.spectral_channels,
                 "pitch_top_hz": mc.pitch_top_hz}
    return Postfilter(nf=mc.nf, ch_mult=tuple(mc.ch_mult), num_res_blocks=mc.num_res_blocks,
                      fourier_scale=mc.fourier_scale, n_fft=mc.n_fft, hop_length=mc.hop_length, alpha=mc.alpha,
                      beta=beta, pad_multiple=mc.pad_multiple, sigma_y=sigma_y, backbone=mc.backbone,
                      framewise=framewise if mc.backbone == "framewise" else None)


def with_new_branches(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` completed by the branches ``own`` has and ``state`` lacks, where they start at zero.

    This is how a frame-wise postfilter grows a dilated context branch (``model.context_dilation``, all
    zero) or a spectral branch (``model.spectral_channels``, whose output layer is zero) from weights
    trained without one: training starts from exactly the model it was given; likewise the pitch paths
    (``model.pitch_top_hz``, all zero). Nothing else is filled in; any other mismatch still fails the strict
    load.
    """
    grown = {k: v for k, v in own.items() if k not in state and not v.any()
             and (".context." in k or k.startswith("backbone.pitch_"))}
    spectral = {k: v for k, v in own.items() if k not in state and k.startswith("backbone.spectral.")}
    if all(not v.any() for k, v in spectral.items() if k.startswith("backbone.spectral.out.")):
        grown.update(spectral)
    return {**state, **grown}


class PostfilterTrainer(Trainer):
    name = "postfilter"

    def build(self) -> None:
        cfg, env = self.config, self.env
        dev = env.device
        pf = build_postfilter(cfg).to(dev)
        pf.train()
        for p in pf.backbone.parameters():
            p.requires_grad_(True)
        self.pf = pf
        self.ema = copy.deepcopy(pf).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        try:  # the Postfilter's own range rule, applied before the first step rather than at the first validation
            self.ema.temperature = cfg.validation.temperature
        except ValueError as exc:
            raise TrainingError(f"validation.temperature: {exc}") from None
        self.ema.temperature = 1.0  # set only while validating: the folders the EMA is saved to keep FlowDec's 1
        self.params = param_list(pf.backbone)
        self.ema_params = [p for p in self.ema.backbone.parameters()]
        self.net = wrap_ddp(pf.backbone, env)
        oc = cfg.optim
        fused = {"fused": True} if dev.type == "cuda" else {}
        self.optimizer = torch.optim.Adam(self.params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps,
                                          weight_decay=oc.weight_decay, **fused)

        dc = cfg.data
        sr = Postfilter.sample_rate
        if not dc.train:
            raise TrainingError("data.train names no pair list (run 'flowdec train prepare-pairs' first)")
        # the sigma file sets the noise scale of a new run (a resumed one or one from weights keeps its own)
        if cfg.sigma.file and not self.resume and not cfg.train.init_from and env.is_main:  # shown with -q too
            stale = stale_sigma_warning(cfg.sigma.file, read_sigma_file(cfg.sigma.file), dc.train)
            if stale:
                self.say(f"warning: {stale}")
        pairs = read_pairs(dc.train, dc.delimiter)
        if not pairs:
            raise TrainingError(f"{', '.join(map(str, dc.train))}: no (clean, coded) pairs in it")
        self.segment = int(round(dc.segment_seconds * sr))
        # a postfilter that reads pitch learns from the F0 its files will send: the clean side's, as sent
        self.pitch = pitch_layout(dc.pitch_layout, sr) if pf.takes_pitch else None
        dataset = PairDataset(pairs, sr, self.segment, seed=cfg.train.seed, train=True, gain_db=dc.gain_db,
                              pitch=self.pitch)
        self.sampler = self.make_sampler(dataset)
        self.loader = make_loader(dataset, self.local_batch, self.sampler, dc.num_workers, dc.prefetch_factor, dev)
        vc = cfg.validation
        val_pairs = read_pairs(dc.validation, dc.delimiter) if dc.validation else []
        order = np.random.default_rng(vc.seed).permutation(len(val_pairs))[:vc.num_files]
        max_samples = None if vc.max_seconds is None else int(vc.max_seconds * sr)
        self.val_set = EvalDataset(sr, pairs=[val_pairs[i] for i in sorted(order)], max_samples=max_samples)
        self.n_train_pairs, self.n_val_pairs = len(pairs), len(val_pairs)
        self.note_no_validation(self.n_val_pairs)

    def _noise(self, seeds: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example flow time t [B] and complex noise [B, 1, F, T] from each example's seed."""
        dev = self.env.device
        ts, eps = [], []
        for s in seeds.tolist():
            g = torch.Generator(dev).manual_seed(int(s))
            ts.append(torch.rand(1, generator=g, device=dev))
            eps.append(torch.randn((1, *shape[1:]), dtype=torch.complex64, generator=g, device=dev))
        return torch.cat(ts), torch.cat(eps)

    def _frame_pitch(self, steps: torch.Tensor | None, frames: int) -> torch.Tensor | None:
        """The pitch steps of a batch ``[B, 1, values]`` as F0 per STFT frame ``[B, frames]`` (None without)."""
        if steps is None or self.pitch is None:
            return None
        hop = self.pf.feature_extractor.hop_length
        return torch.from_numpy(frame_track(self.pitch, steps[:, 0].numpy(), frames, hop)).to(self.env.device)

    def train_step(self, batch: Any, log: bool) -> dict[str, torch.Tensor]:
        x, y, seeds, *rest = batch
        dev = self.env.device
        x = x.to(dev, non_blocking=True)
        y = y.to(dev, non_blocking=True)
        fe = self.pf.feature_extractor
        with torch.no_grad():
            Y, normfac, _ = fe(y)
            X, _, _ = fe(x, normfac)
            if self.config.objective.target_phase == "coded":
                X = with_coded_phase(X, Y)
            t, eps = self._noise(seeds, Y.shape)
            x_t, u = flow_matching_targets(X, Y, self.pf.sigma_y, t, eps)
            pitch = self._frame_pitch(rest[0] if rest else None, Y.shape[-1])
        with self.autocast():
            v = self.net(x_t, Y, t, sigma_y=self.pf.sigma_y, pitch=pitch)
        loss, per_sample = flow_matching_loss(v, u)
        grad_norm = self.backward_and_step(loss, self.params, self.config.optim.grad_clip, log)
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, [p.detach() for p in self.params], 1.0 - self.config.optim.ema_decay)
        out = {"loss": loss.detach()}
        if log:
            out["nan_samples"] = (~torch.isfinite(per_sample)).sum().float()
            if int(out["nan_samples"]) == per_sample.numel():  # the loss left out every example: it reads 0
                raise TrainingError(f"every example of the batch at step {self.step + 1} gave a non-finite loss "
                                    "(NaN in the pairs, sigma_y or the feature settings)")
            if grad_norm is not None:
                out["grad_norm"] = grad_norm.detach()
        return out

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        env, vc = self.env, self.config.validation
        keys = ["input_si_sdr", "input_log_spec_mse"]
        for n in vc.nfe:
            keys += [f"si_sdr_nfe{n}", f"log_spec_mse_nfe{n}"]
        sums = torch.zeros(2 * len(keys), dtype=torch.float64)
        hop = self.ema.feature_extractor.hop_length
        self.ema.temperature = vc.temperature  # only while validating (see build)
        try:
            for i in range(env.rank, len(self.val_set), env.world_size):
                x, y = self.val_set[i]
                assert y is not None
                ref = x[0].numpy()
                values = [si_sdr(ref, y[0].numpy()), log_spectral_mse(x, y, self.ema.feature_extractor.n_fft, hop)]
                pitch = None
                if self.pitch is not None:  # what a file of this clip would send
                    pitch = frame_track(self.pitch, steps_of_signal(self.pitch, x.numpy()),
                                        num_frames(y.shape[-1], hop), hop)
                for n in vc.nfe:
                    g = torch.Generator(env.device).manual_seed(mix_seed(vc.seed, i, n))
                    out = self.ema.enhance(y.to(env.device)[None], nfe=n, solver=vc.solver, generator=g,
                                           pitch=pitch)
                    out = out[0].float().cpu()
                    values += [si_sdr(ref, out[0].numpy()),
                               log_spectral_mse(x, out, self.ema.feature_extractor.n_fft, hop)]
                for k, v in enumerate(values):
                    if math.isfinite(v):
                        sums[2 * k] += v
                        sums[2 * k + 1] += 1
        finally:
            self.ema.temperature = 1.0
        sums = env.all_reduce_sum(sums.to(env.device)).cpu()
        return {key: float(sums[2 * k] / sums[2 * k + 1]) for k, key in enumerate(keys) if sums[2 * k + 1] > 0}

    def checkpoint_payload(self) -> dict[str, Any]:
        return {"model_config": self.pf.config, "model_state": self.pf.state_dict(),
                "ema_state": self.ema.state_dict(), "optimizer": self.optimizer}

    def restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt["trainer"].get("kind") != "postfilter":
            raise TrainingError(f"{ckpt['dir']}: not a postfilter checkpoint")
        if ckpt["ema_state"] is None:
            raise TrainingError(f"{ckpt['dir']}: the checkpoint has no EMA weights")
        try:
            self.pf.load_official_state_dict(ckpt["model_state"], str(ckpt["dir"]))
            self.ema.load_official_state_dict(ckpt["ema_state"], str(ckpt["dir"]))
        except (CheckpointError, ValueError, KeyError, RuntimeError) as exc:
            raise WeightsMisfit(f"{ckpt['dir']}: does not fit this config (another size?): "
                                f"{first_problem(exc)}") from None
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise TrainingError(f"{ckpt['dir']}: its optimiser state does not fit this config (other "
                                f"optim.train_parts or parameters?): {first_problem(exc)}") from None
        # There is no schedule, so the config's rate is the rate: a resumed run can lower it
        # (``--set optim.lr=...``) while Adam keeps its moments. load_state_dict would restore the old one.
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.optim.lr
        self.apply_optimizer_settings()
        for p in self.pf.backbone.parameters():
            p.requires_grad_(True)

    def init_weights(self, source: Path) -> None:
        from .export import postfilter_component

        folder = postfilter_component(source)
        _, state = load_model_folder(folder)
        state = with_new_branches(state, self.pf.state_dict())
        configured = self.pf.sigma_y.clone()
        try:  # the shipped (EMA) weights start both the raw and the EMA copy
            self.pf.load_official_state_dict(state, str(folder))
            self.ema.load_official_state_dict(state, str(folder))
        except (CheckpointError, ValueError, KeyError, RuntimeError) as exc:
            raise TrainingError(f"{folder}: its weights do not fit this config (another backbone or size): "
                                f"{first_problem(exc)}") from None
        # sigma_y travels with the weights: the network reads its inputs in sigma_y units and was trained
        # with that noise scale, so the config's [sigma] does not replace it. Say so where they differ.
        kept = self.pf.sigma_y
        if not self.quiet and self.env.is_main and (
                kept.shape != configured.shape or not torch.allclose(kept, configured.to(kept.dtype), rtol=1e-3)):
            self.say(f"sigma_y comes with the weights of {folder} (mean {float(kept.mean()):.3f}); "
                     f"the config's [sigma] (mean {float(configured.mean()):.3f}) is not used")
        for p in self.pf.backbone.parameters():
            p.requires_grad_(True)

    def finish(self) -> None:
        self.ema.save(self.run_dir / "postfilter")


def train_postfilter(config: PostfilterTrainConfig, **kwargs: Any) -> PostfilterTrainer:
    """Train (or resume) a postfilter; returns the trainer (``.pf``, ``.ema``, ``.history``, ...)."""
    trainer = PostfilterTrainer(config, **kwargs)
    trainer.run()
    return trainer
