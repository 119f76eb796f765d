"""Stage 1: the NDAC generator, trained without any discriminator.

Loss (weights from ``[loss]``): 15 x DAC multi-scale mel + cqt_weight x multi-scale CQT + 50 x L1 waveform
+ 0.25 x commitment + 1 x codebook, and optionally (ours, off by default) ``latent_weight`` x the latent
residual, ``complex_stft_weight`` x the compressed complex STFT loss, ``transport_weight`` x the spectral
transport loss, and dead-code revival (``optim.revive_dead_codes_every``). Quantizer dropout
(``model.quantizer_dropout``, DAC's 0.5) trains every prefix of the codebooks. AdamW (lr 1e-4, betas
0.8/0.99) with ExponentialLR (gamma 0.999996 per step), gradient-norm clipping at 1000 (DAC's generator
setting), bf16/fp16 autocast on CUDA.

The run folder ends up with ``model/`` (a model folder: ``flowdec.json`` + ``ndac/``), which
``flowdec roundtrip --model RUN/model --nfe 0`` and ``flowdec train prepare-pairs --ndac RUN`` accept.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import CheckpointError, load_model_folder
from ..evaluation.metrics import MetricError, phase_coherence, si_sdr
from ..ndac import NDAC, NDACConfig, VectorQuantize
from .base import Trainer
from .common import TrainingError, WeightsMisfit, first_problem, param_list, wrap_ddp
from .config import NDAC_PARTS, NDACTrainConfig, config_to_dict
from .data import EvalDataset, SegmentDataset, list_audio, make_loader, mix_seed, split_items
from .losses import NDACLoss, latent_residual

__all__ = ["NDACTrainer", "train_ndac", "ndac_config_from_train_config"]


def ndac_config_from_train_config(config: NDACTrainConfig) -> NDACConfig:
    return NDACConfig(**config_to_dict(config)["model"])


class _Forward(nn.Module):
    """encoder -> quantizer (always float32) -> decoder, as one module so DDP sees the whole graph."""

    def __init__(self, model: NDAC) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, counts: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(waveform, commitment, codebook, latent residual, codes [B,k,T], projected latents [B,k*d,T]);
        ``counts``: each item's codebook count under quantizer dropout."""
        z = self.model.encoder(x)
        with torch.autocast(x.device.type, enabled=False):
            z_q, codes, latents, commitment, codebook = self.model.quantizer(z.float(), n_quantizers_per_item=counts)
            latent = latent_residual(z, z_q)
        y = self.model.decoder(z_q)
        return y, commitment, codebook, latent, codes, latents


class _Repeat(torch.utils.data.Dataset):
    """Stretch a small dataset to ``length`` items (item i is file i mod n, each with its own crop)."""

    def __init__(self, inner: SegmentDataset, length: int) -> None:
        self.inner, self.length = inner, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: Any) -> torch.Tensor:
        epoch, index = idx if isinstance(idx, (tuple, list)) else (0, idx)
        # distinct randomness per virtual item: fold the repeat count into the epoch tag
        n = len(self.inner)
        return self.inner[(epoch * (self.length // n + 1) + index // n, index % n)]


def annealed_lr(lr: float, lr_final: float, progress: float) -> float:
    """The rate at ``progress`` (0 to 1) of a run that falls log-linearly from ``lr`` to ``lr_final``: the
    shape of an exponential decay per step, fixed by its end points rather than by the run's step count."""
    return lr * (lr_final / lr) ** min(max(progress, 0.0), 1.0)


class NDACTrainer(Trainer):
    name = "ndac"

    def build(self) -> None:
        cfg, env = self.config, self.env
        dev = env.device
        self.model = NDAC(ndac_config_from_train_config(cfg)).to(dev).train()
        for part in set(NDAC_PARTS) - set(cfg.optim.train_parts or NDAC_PARTS):
            getattr(self.model, part).requires_grad_(False)
        self.params = param_list(self.model)
        net = _Forward(self.model)
        self.net = wrap_ddp(net, env)
        sr, hop = self.model.sample_rate, self.model.hop_length
        self.loss_fn = NDACLoss(cfg.loss, sr).to(dev)
        oc = cfg.optim
        fused = dev.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps,
                                           weight_decay=oc.weight_decay, **({"fused": True} if fused else {}))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=oc.lr_gamma)

        dc = cfg.data
        items = list_audio(dc.train)
        if dc.validation:
            train_items, val_items = items, list_audio(dc.validation)
        else:
            parts = split_items(items, {"validation": dc.validation_fraction}, dc.split_salt)
            train_items, val_items = parts["train"], parts["validation"]
        if not train_items:
            where = ", ".join(str(p) for p in dc.train) or "nothing (data.train is empty)"
            raise TrainingError(f"no training audio files in {where} (check data.train)")
        self.segment = max(1, math.ceil(dc.segment_seconds * sr / hop)) * hop
        base = SegmentDataset(train_items, sr, self.segment, seed=cfg.train.seed, loudness_db=dc.loudness_db,
                              gain_db=dc.gain_db, random_polarity=dc.random_polarity)
        dataset = base if len(base) >= dc.batch_size else _Repeat(base, dc.batch_size)
        self.sampler = self.make_sampler(dataset)
        self.loader = make_loader(dataset, self.local_batch, self.sampler, dc.num_workers, dc.prefetch_factor, dev)
        vc = cfg.validation
        max_samples = None if vc.max_seconds is None else max(hop, int(vc.max_seconds * sr))
        self.val_set = EvalDataset(sr, items=val_items[:vc.max_files], max_samples=max_samples)
        self.val_codebooks = vc.n_codebooks or [self.model.n_codebooks]
        self.n_train_files, self.n_val_files = len(train_items), len(val_items)
        self.note_no_validation(self.n_val_files)
        self.code_counts = torch.zeros(self.model.n_codebooks, self.model.codebook_size, device=dev)
        self.revived_since_log = 0  # codes moved since the last logged step (a revival need not fall on one)

    def dropout_counts(self) -> torch.Tensor:
        """This process's items' codebook counts for this step under quantizer dropout, as DAC draws them
        for one batch (its first ``quantizer_dropout`` fraction at a random count, the rest at all), drawn
        for the whole global batch from (seed, step) alone and dealt out as the sampler deals the items
        (global position rank + world_size * i): N processes then code each item as one process would,
        where each process dropping out its own first half did not."""
        env, model = self.env, self.model
        total = self.config.data.batch_size
        counts = torch.full((total,), model.n_codebooks, dtype=torch.long)
        dropped = int(total * model.quantizer.quantizer_dropout)
        if dropped:
            # four values: no (seed, step, rank) reseed of a step can share this seed
            g = torch.Generator().manual_seed(mix_seed(self.config.train.seed, self.step, -1, 0x51))
            counts[:dropped] = torch.randint(1, model.n_codebooks + 1, (dropped,), generator=g)
        return counts[env.rank::env.world_size]

    def train_step(self, batch: torch.Tensor, log: bool) -> dict[str, torch.Tensor]:
        x = batch.to(self.env.device, non_blocking=True)
        with self.autocast():
            y, commitment, codebook, latent, codes, latents = self.net(x, self.dropout_counts())
        loss, parts = self.loss_fn(y, x[..., :y.shape[-1]], commitment, codebook, latent)
        oc = self.config.optim
        if oc.lr_final is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = annealed_lr(oc.lr, oc.lr_final, self.progress)
        grad_norm = self.backward_and_step(loss, self.params, oc.grad_clip, log)
        if oc.lr_final is None:
            self.scheduler.step()
        out = {"loss": loss.detach(), **{f"loss_{k}": v.detach() for k, v in parts.items()}}
        every = self.config.optim.revive_dead_codes_every
        if every:
            add_code_counts(self.code_counts, codes)
            if (self.step + 1) % every == 0:
                self.revived_since_log += self.revive_dead_codes(latents.detach())
            if log:
                out["revived_codes"] = torch.tensor(float(self.revived_since_log))
                self.revived_since_log = 0
        if log:
            out["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])
            if grad_norm is not None:
                out["grad_norm"] = grad_norm.detach()
        return out

    @torch.no_grad()
    def revive_dead_codes(self, latents: torch.Tensor) -> int:
        """Move every entry that no batch chose since the last call onto a random projected latent of this
        batch (``latents`` [B, k*d, T], the quantizer's ``z_e``), zero its optimiser moments, reset the counts,
        and return how many entries moved. With several processes the counts are summed and the main
        process's picks are used everywhere, so the replicas stay equal."""
        env, model = self.env, self.model
        counts = env.all_reduce_sum(self.code_counts.clone())
        d = model.config.codebook_dim
        revived = 0
        quantizers: list[VectorQuantize] = list(model.quantizer.quantizers)  # type: ignore[arg-type]
        for c, quantizer in enumerate(quantizers):
            pool = latents[:, c * d:(c + 1) * d].transpose(1, 2).reshape(-1, d).float()
            dead = counts[c] == 0
            n_dead = int(dead.sum())  # equal on every process: the counts were summed
            if not n_dead:
                continue
            picks = pool[torch.randint(0, pool.shape[0], (model.codebook_size,), device=pool.device)]
            if env.world_size > 1:
                picks = env.all_reduce_sum(picks if env.is_main else torch.zeros_like(picks))
            weight = quantizer.codebook.weight
            weight[dead] = picks[dead].to(weight.dtype)
            state = self.optimizer.state.get(weight, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0
            revived += n_dead
        self.code_counts.zero_()
        return revived

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        env = self.env
        model = self.model
        model.eval()
        names = ("mel_loss", "si_sdr", "coherence")
        keys = [f"{m}_nq{k}" for k in self.val_codebooks for m in names]
        sums = torch.zeros(len(keys) * 2, dtype=torch.float64)
        usage = torch.zeros(model.n_codebooks, model.codebook_size, dtype=torch.float64)
        try:
            for i in range(env.rank, len(self.val_set), env.world_size):
                x, _ = self.val_set[i]
                x = x[None].to(env.device)
                length = x.shape[-1]
                z = model.encoder(model.pad_to_hop(x))
                add_code_counts(usage, model.quantizer(z, n_quantizers=model.n_codebooks)[1].cpu())
                for j, k in enumerate(self.val_codebooks):
                    y = model.decoder(model.quantizer(z, n_quantizers=k)[0])
                    y = F.pad(y, (0, max(length - y.shape[-1], 0)))[..., :length]
                    mel = float(self.loss_fn.mel(y, x)) if self.loss_fn.mel is not None else float("nan")
                    ref, decoded = x[0, 0].cpu().numpy(), y[0, 0].float().cpu().numpy()
                    try:
                        coherence = phase_coherence(ref, decoded, model.sample_rate)
                    except MetricError:  # silent in the band: no phase to compare
                        coherence = float("nan")
                    for i, v in enumerate((mel, si_sdr(ref, decoded), coherence)):
                        n = len(names) * j + i
                        if math.isfinite(v):
                            sums[2 * n] += v
                            sums[2 * n + 1] += 1
        finally:
            model.train()
        sums = env.all_reduce_sum(sums.to(env.device)).cpu()
        out = {}
        for n, key in enumerate(keys):
            if sums[2 * n + 1] > 0:
                out[key] = float(sums[2 * n] / sums[2 * n + 1])
        out.update(codebook_usage(env.all_reduce_sum(usage.to(env.device)).cpu()))
        return out

    def checkpoint_payload(self) -> dict[str, Any]:
        state: dict[str, Any] = {"scheduler": self.scheduler.state_dict()}
        if self.config.optim.revive_dead_codes_every:
            # how often each entry was chosen since the last revival, summed over the processes (every one
            # saves): a resume that started them at zero revived entries an uninterrupted run keeps
            counts = self.env.all_reduce_sum(self.code_counts.clone())
            state["code_counts"] = counts.long().cpu().tolist()
        return {
            "model_config": {"type": "ndac", **self.model.config.to_dict()},
            "model_state": self.model.state_dict(),
            "optimizer": self.optimizer,
            "trainer_state": state,
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt["trainer"].get("kind") != "ndac":
            raise TrainingError(f"{ckpt['dir']}: not an NDAC checkpoint")
        try:
            self.model.load_official_state_dict(ckpt["model_state"], str(ckpt["dir"]))
        except (CheckpointError, ValueError, KeyError, RuntimeError) as exc:
            raise WeightsMisfit(f"{ckpt['dir']}: does not fit this config (another size?): "
                                f"{first_problem(exc)}") from None
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["trainer"]["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise TrainingError(f"{ckpt['dir']}: its optimiser state does not fit this config (other "
                                f"optim.train_parts or parameters?): {first_problem(exc)}") from None
        self.apply_optimizer_settings()
        oc = self.config.optim
        self.scheduler.gamma = oc.lr_gamma  # the state put back the checkpoint's
        before = ckpt["trainer"].get("config", {}).get("optim", {}).get("lr")
        if oc.lr_final is None and before is not None and before != oc.lr:
            # a new rate asked for: the schedule goes on from it (with lr_final the anneal starts from it anyway)
            for group in self.optimizer.param_groups:
                group["lr"] = oc.lr
            self.scheduler.base_lrs = [oc.lr] * len(self.optimizer.param_groups)
        counts = ckpt["trainer"].get("code_counts")
        if counts is not None and oc.revive_dead_codes_every and self.env.is_main:  # the others keep zeros: summed
            saved = torch.tensor(counts, dtype=self.code_counts.dtype, device=self.code_counts.device)
            if saved.shape == self.code_counts.shape:
                self.code_counts.copy_(saved)

    def init_weights(self, source: Path) -> None:
        from .export import ndac_component

        folder = ndac_component(source)
        config, state = load_model_folder(folder)
        theirs, mine = config.get("decoder_kind", "dac"), self.model.config.decoder_kind
        if theirs != mine:  # another kind of D0: its encoder and codebooks carry over, the decoder starts anew
            parts = self.config.optim.train_parts
            if parts and "decoder" not in parts:
                raise TrainingError(f"{folder} has a '{theirs}' decoder and this config a '{mine}' one, whose new "
                                    "weights would stay untrained: add \"decoder\" to optim.train_parts")
            state = {**{k: v for k, v in state.items() if not k.startswith("decoder.")},
                     **{k: v for k, v in self.model.state_dict().items() if k.startswith("decoder.")}}
            if self.env.is_main and not self.quiet:
                self.say(f"{folder} has a '{theirs}' decoder and this config a '{mine}' one: its encoder and "
                         "codebooks are loaded, the decoder starts from new weights")
        try:
            self.model.load_official_state_dict(state, str(folder))
        except (CheckpointError, ValueError, KeyError, RuntimeError) as exc:
            raise TrainingError(f"{folder}: its weights do not fit this config (another backbone or size): "
                                f"{first_problem(exc)}") from None

    def finish(self) -> None:
        """RUN/model: the codec as a model folder, staged and published. A run that finishes again after a
        resume replaces what a model owns there (:data:`ModelFolderBuilder.OWNED`: card, README.md,
        components; stale entropy tables go) and keeps what else a user put beside it (notes, a hub repo's
        .git); a folder holding only a model is exchanged whole."""
        from ..models.folder import ModelFolderBuilder

        card = {"name": self.run_dir.name, "licence": "unknown",
                "description": f"NDAC trained with flowdec for {self.step} steps (codec only)"}
        with ModelFolderBuilder(self.run_dir / "model") as folder:
            folder.add_ndac(self.model)
            folder.write_card(card)
            folder.publish_into(overwrite=True)


def add_code_counts(counts: torch.Tensor, codes: torch.Tensor) -> None:
    """Add codes [B,k,T] to ``counts`` [n_codebooks, codebook_size] (how often each entry was chosen)."""
    for c in range(codes.shape[1]):
        counts[c] += torch.bincount(codes[:, c].reshape(-1), minlength=counts.shape[1]).to(counts.dtype)


def codebook_usage(counts: torch.Tensor) -> dict[str, float]:
    """Per-codebook ``used_cb{k}`` (share of entries chosen at least once) and ``perplexity_cb{k}``
    (exp of the entropy of the code histogram: 1 = one entry does everything, the codebook size = uniform)
    from ``[n_codebooks, codebook_size]`` counts. Low values flag collapsed or dead codebooks: the reason
    DAC-style trainers revive dead codes; healthy values say the codec's trouble lies elsewhere."""
    out: dict[str, float] = {}
    for k, row in enumerate(counts.double()):
        total = float(row.sum())
        if total <= 0:
            continue
        p = row[row > 0] / total
        out[f"used_cb{k}"] = float((row > 0).double().mean())
        out[f"perplexity_cb{k}"] = float(torch.exp(-(p * p.log()).sum()))
    return out


def train_ndac(config: NDACTrainConfig, **kwargs: Any) -> NDACTrainer:
    """Train (or resume) an NDAC; returns the trainer (``.model``, ``.history``, ``.last_validation``)."""
    trainer = NDACTrainer(config, **kwargs)
    trainer.run()
    return trainer
