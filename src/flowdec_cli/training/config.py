"""Training configurations for both FlowDec stages, read from TOML or YAML files.

A config file has one table per section (``[model]``, ``[data]``, ``[loss]``, ``[optim]``, ``[train]``,
``[validation]``, and for the postfilter ``[sigma]``); every key is optional and defaults to the official
value where one is known (``docs/training.md`` lists each key and where its default comes from). Sizes are
settings too, so a tiny CPU model is the same file with smaller numbers (``configs/*-tiny.toml``).

Relative paths inside a config file (data lists, the sigma file, ``train.out_dir``, ``train.init_from``)
are taken relative to
the folder holding the config file. ``overrides`` (``"section.key=value"``, the value written as in TOML)
change single keys after loading, which is what ``flowdec train ... --set`` uses.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as the tomli package (a dependency there)
    import tomli as tomllib

from ..exceptions import FlowdecError, InvalidValue
from ..ndac_config import NDACConfig
from ..numeric import is_integer, is_real

__all__ = [
    "ConfigError",
    "OverrideError",
    "NDACModelConfig",
    "AudioDataConfig",
    "NDACLossConfig",
    "NDACOptimConfig",
    "TrainLoopConfig",
    "NDACValidationConfig",
    "NDACTrainConfig",
    "PostfilterModelConfig",
    "SigmaConfig",
    "PairDataConfig",
    "PostfilterOptimConfig",
    "PostfilterValidationConfig",
    "PostfilterObjectiveConfig",
    "PostfilterTrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
]


class ConfigError(FlowdecError):
    """A config file that cannot be read or holds an invalid value; the message names the key."""


class OverrideError(ConfigError):
    """An override (``--set section.key=value``) that is malformed or sets an invalid value: the fault is in
    the command line, not the file, so the CLI reports it as a usage error (exit 2)."""


# --------------------------------------------------------------------------------------------------
# Shared sections


@dataclass
class TrainLoopConfig:
    """[train]: the loop itself (steps, precision, logging and checkpoint cadence)."""

    max_steps: int = 800_000
    # a wall-clock budget for this process's loop (seconds; None = none): the run stops after the step that
    # reaches it and saves a checkpoint and its outputs as at max_steps, which a `timeout` kill cannot
    # promise. A schedule that anneals (the codec's optim.lr_final) counts it as the run's length.
    max_seconds: float | None = None
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on CUDA if supported, else fp16), bf16, fp16, none; CPU always runs fp32
    tf32: bool = True  # float32_matmul_precision "high" on CUDA (the official postfilter setting)
    log_every: int = 50
    val_every: int = 10_000
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3  # newest N kept; 0 keeps all
    out_dir: str = "runs/train"
    # start a new run from these weights (a model, component, run or checkpoint folder) instead of a random
    # init: how training accumulates across machines from what the repository ships; ignored on --resume
    init_from: str | None = None
    progress: bool = True
    tensorboard: bool = True  # used when the tensorboard package is installed


# --------------------------------------------------------------------------------------------------
# NDAC


@dataclass
class NDACModelConfig(NDACConfig):
    """[model]: NDAC constructor settings, the codec's own :class:`~flowdec_cli.ndac_config.NDACConfig` (its
    bounds, checked as the section is read) with defaults for training.

    The defaults are an NDAC-75-shaped codec: 48 kHz, hop 640 (75 Hz), 10 codebooks of 1024, DAC widths.
    The released NDAC-75 strides are not public; ``[8,5,4,4]`` reproduces its known 8-sample decoder deficit.
    ``decoder_kind = "phase"`` trains a frame-wise D0 that carries phase from frame to frame
    (flowdec_cli.phase_decoder; docs/models.md, "A decoder that carries phase").
    """

    encoder_rates: list[int] = field(default_factory=lambda: [8, 5, 4, 4])
    latent_dim: int | None = 1024
    decoder_rates: list[int] = field(default_factory=lambda: [4, 4, 5, 8])
    n_codebooks: int = 10
    quantizer_dropout: float = 0.5
    sample_rate: int = 48000


@dataclass
class AudioDataConfig:
    """[data] of the NDAC stage: folders of audio files and/or text lists of paths."""

    train: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)  # empty: a hash split of ``train``
    validation_fraction: float = 0.01
    split_salt: str = "flowdec"
    segment_seconds: float = 0.38  # DAC's training excerpt length
    batch_size: int = 72  # DAC 44k's batch (global; divided among torchrun processes)
    num_workers: int = 8
    prefetch_factor: int = 4
    loudness_db: float | None = -16.0  # RMS normalisation target in dBFS (DAC normalises to -16 dB)
    gain_db: list[float] = field(default_factory=lambda: [-6.0, 6.0])  # random gain after normalisation
    random_polarity: bool = True


@dataclass
class NDACLossConfig:
    """[loss]: DAC's mel loss, the multi-scale CQT loss, the L1 waveform loss and the VQ losses."""

    mel_weight: float = 15.0
    mel_windows: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    mel_bins: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 80, 160, 320])
    mel_clamp: float = 1e-5
    mel_mag_weight: float = 0.0
    mel_log_weight: float = 1.0
    mel_pow: float = 1.0
    cqt_weight: float = 15.0  # not recovered from the paper; ours (the mel loss's weight)
    cqt_octaves: int = 9
    cqt_fmin: float = 27.5
    cqt_hop: int = 256
    cqt_bins_per_octave: list[int] = field(default_factory=lambda: [16, 32, 48, 64, 80])
    cqt_clamp: float = 1e-5
    waveform_weight: float = 50.0
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    # ours, not DAC's (0 = off): relative squared error between the encoder latent and the quantised latent
    # each item decodes from. DAC's VQ losses live in each codebook's 8-dim projection, so nothing asks the
    # sum of the up-projected codes to approach the latent; in small codecs the "residual" then grows with
    # every codebook and the later codebooks add little (docs/models.md, "Codec").
    latent_weight: float = 0.0
    # ours, not DAC's (0 = off): squared error of amplitude-compressed complex STFTs (|S|^alpha e^{i angle S},
    # the postfilter's own feature map), per window length. The waveform L1 is dominated by the loudest, lowest
    # partials; this loss weighs every band alike, so it asks for the right phase above a few hundred hertz,
    # where a small codec trained on magnitudes and waveform L1 alone keeps none (docs/models.md, "Codec").
    complex_stft_weight: float = 0.0
    complex_stft_windows: list[int] = field(default_factory=lambda: [256, 512, 1024])
    complex_stft_alpha: float = 0.3
    # ours (0 = off): the spectral earth mover's distance plus log level (losses.SpectralTransportLoss), which
    # falls as a partial moves towards its place: the codec's other losses score silence above a partial on
    # the wrong line of its 75 Hz comb (docs/models.md, "Why the harmonics stick")
    transport_weight: float = 0.0
    transport_windows: list[int] = field(default_factory=lambda: [2048, 8192])


@dataclass
class NDACOptimConfig:
    """[optim]: AdamW with exponential LR decay per step (DAC's defaults)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.01
    lr_gamma: float = 0.999996
    # ours: when set, the rate falls log-linearly from lr to lr_final over the run (train.max_steps, or
    # train.max_seconds when that ends it first) instead of by lr_gamma per step, so a run of unknown length
    # (a time budget on a lent GPU) still ends annealed: codecs cut off at a high rate did worse on unseen
    # audio, and annealing one undid most of it (docs/models.md, "Annealing the codec").
    lr_final: float | None = None
    grad_clip: float | None = 1000.0
    # every this many steps, codebook entries no batch chose since the last check are moved onto latents of
    # the current batch (random picks), as EnCodec-style trainers revive dead codes; 0 = off (DAC's recipe)
    revive_dead_codes_every: int = 0
    # ours: the parts of the codec that learn ("encoder", "quantizer", "decoder"; empty = all). Codes searched
    # for through a frozen decoder decode far better than the encoder's own (docs/models.md, "Searching for
    # codes"): an encoder trained alone against a fixed decoder can chase that without changing what any
    # existing file decodes to (short CPU runs did not; a GPU lease may).
    train_parts: list[str] = field(default_factory=list)


NDAC_PARTS = ("encoder", "quantizer", "decoder")


@dataclass
class NDACValidationConfig:
    """[validation]: mel loss and SI-SDR on the validation files at these codebook counts."""

    max_files: int = 100
    max_seconds: float | None = 10.0  # centre crop; None = whole files
    n_codebooks: list[int] = field(default_factory=list)  # empty = all codebooks


@dataclass
class NDACTrainConfig:
    model: NDACModelConfig = field(default_factory=NDACModelConfig)
    data: AudioDataConfig = field(default_factory=AudioDataConfig)
    loss: NDACLossConfig = field(default_factory=NDACLossConfig)
    optim: NDACOptimConfig = field(default_factory=NDACOptimConfig)
    train: TrainLoopConfig = field(default_factory=lambda: TrainLoopConfig(out_dir="runs/ndac"))
    validation: NDACValidationConfig = field(default_factory=NDACValidationConfig)

    kind = "ndac"

    def validate(self) -> None:
        m = self.model  # its bounds were checked as it was built (NDACConfig.__post_init__)
        if not 0.0 <= m.quantizer_dropout <= 1.0:
            raise ConfigError("model.quantizer_dropout must lie in [0, 1]")
        if m.decoder_kind == "phase" and m.phase_lock:  # no gradient reaches its advances through the lock
            raise ConfigError("model.phase_lock: its advances learn from an advance loss this trainer lacks; train "
                              "such a decoder with scripts/experiment_phase_decoder.py --lock")
        if len(self.loss.mel_windows) != len(self.loss.mel_bins):
            raise ConfigError("loss.mel_windows and loss.mel_bins must have the same length")
        for k in self.validation.n_codebooks:
            if not 1 <= k <= m.n_codebooks:
                raise ConfigError(f"validation.n_codebooks: {k} is not in [1, {m.n_codebooks}]")
        if len(self.optim.betas) != 2:
            raise ConfigError("optim.betas must have two values")
        if self.loss.latent_weight < 0:
            raise ConfigError("loss.latent_weight must be at least 0")
        if self.loss.complex_stft_weight < 0:
            raise ConfigError("loss.complex_stft_weight must be at least 0")
        if not 0 < self.loss.complex_stft_alpha <= 1:
            raise ConfigError("loss.complex_stft_alpha must be in (0, 1]")
        _check_stft_windows("loss.complex_stft_windows", self.loss.complex_stft_windows)
        if self.loss.transport_weight < 0:
            raise ConfigError("loss.transport_weight must be at least 0")
        windows = self.loss.transport_windows
        _check_stft_windows("loss.transport_windows", windows)
        if self.loss.transport_weight and max(windows) // 2 >= self.data.segment_seconds * m.sample_rate:
            raise ConfigError(f"loss.transport_windows: a window of {max(windows)} samples needs training segments "
                              f"longer than {max(windows) // 2} samples (data.segment_seconds)")
        if not 0 < self.optim.lr_gamma <= 1:
            raise ConfigError(f"optim.lr_gamma must lie in (0, 1] (the rate's factor per step), got "
                              f"{self.optim.lr_gamma}")
        if self.data.loudness_db is not None and not -100 <= self.data.loudness_db <= 20:
            raise ConfigError(f"data.loudness_db must lie in [-100, 20] dBFS (or be none: no normalisation), "
                              f"got {self.data.loudness_db}")
        _check_cqt(self.loss, m.sample_rate)
        if self.optim.lr_final is not None and not self.optim.lr_final > 0:
            raise ConfigError("optim.lr_final must be positive (or absent: the lr_gamma schedule)")
        if self.optim.revive_dead_codes_every < 0:
            raise ConfigError("optim.revive_dead_codes_every must be at least 0 (0 = off)")
        parts = self.optim.train_parts
        if not isinstance(parts, list) or any(p not in NDAC_PARTS for p in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"optim.train_parts must list distinct parts of {list(NDAC_PARTS)} (empty = all), "
                              f"got {parts!r}")
        if parts and "quantizer" not in parts and self.optim.revive_dead_codes_every:
            raise ConfigError("optim.revive_dead_codes_every moves codebook entries; it needs 'quantizer' in "
                              "optim.train_parts (or set it to 0)")
        _check_common(self.data.batch_size, self.data.gain_db, self.train, self.data.validation_fraction,
                      self.optim.lr, self.data.segment_seconds, self.optim.grad_clip)


# --------------------------------------------------------------------------------------------------
# Postfilter


@dataclass
class PostfilterModelConfig:
    """[model]: the backbone and its size, and the feature map (official values).

    ``backbone = "ncsnpp"`` (official ``ncsnpp_final_no_attn``: nf, ch_mult, num_res_blocks) or
    ``"framewise"`` (our 1-D ConvNeXt over frames: dim, intermediate_dim, num_blocks, kernel_size,
    fourier_size, context_dilation, spectral_channels and pitch_top_hz (0 = off); see docs/framewise.md).
    The other backbone's keys are ignored. ``pitch_top_hz`` > 0 makes the postfilter read the input's F0
    (the pitch side channel of ``data.pitch_layout``, estimated on each pair's clean side) as a harmonic
    template up to that frequency.
    """

    backbone: str = "ncsnpp"
    dim: int = 256
    intermediate_dim: int = 768
    num_blocks: int = 6
    kernel_size: int = 7
    fourier_size: int = 64
    context_dilation: int = 0
    spectral_channels: int = 0
    pitch_top_hz: int = 0
    nf: int = 64
    ch_mult: list[int] = field(default_factory=lambda: [4, 4, 4, 2])
    num_res_blocks: int = 1
    fourier_scale: float = 16.0
    n_fft: int = 1534
    hop_length: int = 384
    alpha: float = 0.3
    beta: float = 0.33
    pad_multiple: int = 64


@dataclass
class SigmaConfig:
    """[sigma]: the source noise scale sigma_y.

    ``mode = "global"`` uses ``value`` (official 0.66) unless ``file`` holds an estimate; ``"perband"`` needs
    ``file`` (written by ``flowdec train estimate-sigma``) and smooths its per-band curve with a Gaussian of
    ``smoothing_bins`` (official ``kernel_bandwidth`` 3), times ``factor``. ``beta_from_file`` replaces
    ``model.beta`` by the estimate's suggested beta.
    """

    mode: str = "global"
    value: float = 0.66
    file: str | None = None
    smoothing_bins: float = 3.0
    factor: float = 1.0
    beta_from_file: bool = False


@dataclass
class PairDataConfig:
    """[data] of the postfilter stage: "clean,coded" pair lists (official format, one pair per line)."""

    train: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    delimiter: str = ","
    segment_seconds: float = 2.0
    batch_size: int = 8
    num_workers: int = 10
    prefetch_factor: int = 4
    gain_db: list[float] = field(default_factory=lambda: [0.0, 0.0])  # the model peak-normalises anyway
    pitch_layout: str = "f0-24ms"  # for a model that reads pitch: the side channel its files send


@dataclass
class PostfilterOptimConfig:
    """[optim]: Adam without schedule, EMA of all weights (official values)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float = 0.999


@dataclass
class PostfilterObjectiveConfig:
    """[objective]: what the flow is trained to reach.

    ``target_phase = "clean"`` is FlowDec's: the clean features X. ``"coded"`` (ours) trains towards the
    clean magnitudes with the coded signal's phase, ``|X| Y / |Y|`` (X where Y is silent). It is meant for
    codecs that invent the phase: where the coded phase bears no relation to the clean one, the clean
    target's conditional mean is zero, so the flow can only replace the coded sound by noise of the right
    power; with the coded phase as the target it corrects the magnitudes and keeps the coded signal's
    phase, which is consistent from frame to frame. The sampler and inference are unchanged.
    """

    target_phase: str = "clean"


@dataclass
class PostfilterValidationConfig:
    """[validation]: enhance ``num_files`` validation files with the EMA weights (SI-SDR, log-spectral MSE)."""

    num_files: int = 20
    seed: int = 0
    nfe: list[int] = field(default_factory=lambda: [6])
    solver: str = "midpoint"
    max_seconds: float | None = None  # None = whole files, as officially
    # ours: the start-noise temperature of the validation runs (Postfilter.start), so that a model meant to
    # ship at a lower temperature is judged as it will run; 1 = FlowDec
    temperature: float = 1.0


@dataclass
class PostfilterTrainConfig:
    model: PostfilterModelConfig = field(default_factory=PostfilterModelConfig)
    sigma: SigmaConfig = field(default_factory=SigmaConfig)
    data: PairDataConfig = field(default_factory=PairDataConfig)
    optim: PostfilterOptimConfig = field(default_factory=PostfilterOptimConfig)
    train: TrainLoopConfig = field(default_factory=lambda: TrainLoopConfig(
        max_steps=1_000_000, val_every=20_000, checkpoint_every=50_000, out_dir="runs/postfilter"))
    validation: PostfilterValidationConfig = field(default_factory=PostfilterValidationConfig)
    objective: PostfilterObjectiveConfig = field(default_factory=PostfilterObjectiveConfig)

    kind = "postfilter"

    def validate(self) -> None:
        if self.sigma.mode not in ("global", "perband"):
            raise ConfigError(f"sigma.mode must be 'global' or 'perband', got {self.sigma.mode!r}")
        if self.sigma.mode == "perband" and not self.sigma.file:
            raise ConfigError("sigma.mode 'perband' needs sigma.file (run 'flowdec train estimate-sigma' first)")
        if self.sigma.beta_from_file and not self.sigma.file:
            raise ConfigError("sigma.beta_from_file needs sigma.file")
        if not 0.0 <= self.optim.ema_decay < 1.0:
            raise ConfigError("optim.ema_decay must lie in [0, 1)")
        if self.objective.target_phase not in ("clean", "coded"):
            raise ConfigError(f"objective.target_phase must be 'clean' or 'coded', got {self.objective.target_phase!r}")
        if self.validation.solver not in ("midpoint", "euler"):
            raise ConfigError("validation.solver must be 'midpoint' or 'euler'")
        for n in self.validation.nfe:
            if n < 1 or (self.validation.solver == "midpoint" and n % 2):
                raise ConfigError(f"validation.nfe: {n} is not a positive (for midpoint: even) number")
        if len(self.optim.betas) != 2:
            raise ConfigError("optim.betas must have two values")
        m = self.model
        if m.backbone not in ("ncsnpp", "framewise"):
            raise ConfigError(f"model.backbone must be 'ncsnpp' or 'framewise', got {m.backbone!r}")
        if m.backbone == "ncsnpp" and not m.ch_mult:
            raise ConfigError("model.ch_mult must list at least one channel multiplier")
        if m.backbone == "framewise":
            for key in ("dim", "intermediate_dim", "num_blocks", "kernel_size", "fourier_size"):
                if getattr(m, key) < 1:
                    raise ConfigError(f"model.{key} must be at least 1")
            if m.kernel_size % 2 == 0:
                raise ConfigError(f"model.kernel_size must be odd, got {m.kernel_size}")
            if m.context_dilation < 0:
                raise ConfigError(f"model.context_dilation must be 0 (off) or more, got {m.context_dilation}")
            if m.spectral_channels < 0:
                raise ConfigError(f"model.spectral_channels must be 0 (off) or more, got {m.spectral_channels}")
            if not 0 <= m.pitch_top_hz <= 24000:
                raise ConfigError(f"model.pitch_top_hz must be 0 (off) up to 24000, got {m.pitch_top_hz}")
        elif m.pitch_top_hz:
            raise ConfigError("model.pitch_top_hz needs the framewise backbone")
        if m.pitch_top_hz:
            from ..pitch import PitchError, pitch_layout

            try:
                pitch_layout(self.data.pitch_layout, 48000)
            except PitchError as exc:
                raise ConfigError(f"data.pitch_layout: {exc}") from None
        factor = 2 ** (len(m.ch_mult) - 1) if m.backbone == "ncsnpp" else 1
        if (m.n_fft // 2 + 1) % factor or m.pad_multiple % factor:
            raise ConfigError(f"model: n_fft // 2 + 1 and pad_multiple must be divisible by {factor} "
                              f"(2 ** (len(ch_mult) - 1))")
        if not 0 < m.alpha <= 1:
            raise ConfigError(f"model.alpha must lie in (0, 1] (the amplitude compression's exponent), got {m.alpha}")
        if not m.beta > 0:
            raise ConfigError(f"model.beta must be positive (the feature scale), got {m.beta}")
        if not self.sigma.value > 0 or not self.sigma.factor > 0:
            raise ConfigError("sigma.value and sigma.factor must be positive")
        if len(self.data.delimiter) != 1 or self.data.delimiter in "\r\n\"":
            raise ConfigError(f"data.delimiter must be one character (not a newline or quote), got "
                              f"{self.data.delimiter!r}")
        _check_common(self.data.batch_size, self.data.gain_db, self.train, 0.0, self.optim.lr,
                      self.data.segment_seconds, self.optim.grad_clip)


#: what one training item and one batch may hold: far above any recipe, far below what overflows an index or
#: asks the allocator for petabytes (a typo such as segment_seconds = 1e12 is named, not attempted)
MAX_BATCH_SIZE = 65_536
MAX_SEGMENT_SECONDS = 600.0


def _check_common(batch_size: int, gain_db: list[float], train: TrainLoopConfig, fraction: float, lr: float,
                  segment_seconds: float, grad_clip: float | None) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(f"data.batch_size must lie in [1, {MAX_BATCH_SIZE}], got {batch_size}")
    if not lr > 0:
        raise ConfigError(f"optim.lr must be a positive number, got {lr}")
    if not 0 < segment_seconds <= MAX_SEGMENT_SECONDS:
        raise ConfigError(f"data.segment_seconds must lie in (0, {MAX_SEGMENT_SECONDS:g}], got {segment_seconds}")
    if len(gain_db) != 2 or gain_db[0] > gain_db[1] or not all(-60 <= g <= 60 for g in gain_db):
        raise ConfigError("data.gain_db must be [low, high] with -60 <= low <= high <= 60 (dB)")
    if grad_clip is not None and not grad_clip > 0:
        raise ConfigError(f"optim.grad_clip must be positive (or none: no clipping), got {grad_clip}")
    if train.amp not in ("auto", "bf16", "fp16", "none"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or none, got {train.amp!r}")
    if train.max_steps < 0:
        raise ConfigError("train.max_steps must not be negative")
    if train.max_seconds is not None and not train.max_seconds > 0:
        raise ConfigError("train.max_seconds must be positive (or absent: no time budget)")
    for name in ("log_every", "val_every", "checkpoint_every"):
        if getattr(train, name) < 0:
            raise ConfigError(f"train.{name} must not be negative (0 disables)")
    if not 0.0 <= fraction < 1.0:
        raise ConfigError("data.validation_fraction must lie in [0, 1)")


CONFIG_TYPES: dict[str, type] = {"ndac": NDACTrainConfig, "postfilter": PostfilterTrainConfig}

# Keys that hold paths (resolved against the config file's folder).
_PATH_KEYS = {("data", "train"), ("data", "validation"), ("sigma", "file"), ("train", "out_dir"),
              ("train", "init_from")}


# --------------------------------------------------------------------------------------------------
# Reading and writing


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a config is UTF-8 TOML or YAML)") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid TOML (nested too deeply)") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install 'flowdec-cli[train]'), "
                              "or write the config as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
        data = {} if data is None else data
    else:
        raise ConfigError(f"{path}: unknown config format '{suffix}' (use .toml, .yaml or .yml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections")
    return data


def _parse_value(text: str, item: str) -> Any:
    """A ``--set`` value as TOML; a bare word that is not TOML is taken as a string (``data.train=a.txt``),
    ``none``/``null`` as unset. A value that starts like a list, table or quoted string but does not parse
    is refused: taken as a string, ``[a.txt]`` became one path named "[a.txt]"."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except RecursionError:
        raise OverrideError(f"--set '{item}': nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        if text.lower() in ("none", "null"):
            return None
        if not text:
            raise OverrideError(f"--set '{item}': no value; give one, or none to unset the key") from None
        if text[0] in "[{\"'":
            raise OverrideError(f"--set '{item}': not a TOML value ({exc}); strings inside a list are quoted, "
                                "e.g. data.train='[\"a.txt\"]'") from None
        return text


def _apply_overrides(data: dict[str, Any], overrides: list[str]) -> set[tuple[str, str]]:
    """Set each ``section.key=value`` in ``data``; the (section, key) pairs set, to name ``--set`` rather
    than the file when one of them is refused."""
    done: set[tuple[str, str]] = set()
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise OverrideError(f"--set '{item}': expected section.key=value")
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise OverrideError(f"--set '{item}': '{parts[0]}' is not a section")
        section[parts[1]] = _parse_value(value.strip(), item)
        done.add((parts[0], parts[1]))
    return done


def cqt_problem(sample_rate: int, n_octaves: int, fmin: float, hop: int,
                bins_per_octave: Sequence[int] = (12,)) -> str | None:
    """Why a CQT of ``n_octaves`` from ``fmin`` with ``hop`` cannot be built at ``sample_rate`` (None: it
    can): its octaves must stay below Nyquist and halve its hop evenly. The loss asks this too."""
    if not fmin > 0 or not 1 <= n_octaves <= 16 or hop < 1:
        return f"needs a positive fmin, 1 to 16 octaves and a hop of at least 1 (got {fmin:g} Hz, {n_octaves}, {hop})"
    top = fmin * 2.0 ** n_octaves
    if top >= sample_rate / 2:
        return f"{n_octaves} octaves from {fmin:g} Hz reach {top:g} Hz, above Nyquist ({sample_rate / 2:g} Hz)"
    if hop % 2 ** (n_octaves - 1):
        return f"hop {hop} must be divisible by 2 ** (n_octaves - 1) = {2 ** (n_octaves - 1)}"
    if not bins_per_octave or not all(1 <= b <= 1024 for b in bins_per_octave):
        return f"bins per octave must be 1 to 1024 each, got {list(bins_per_octave)}"
    return None


def _check_cqt(loss: NDACLossConfig, sample_rate: int) -> None:
    """Refused as the config is read, where the loss's own check would surface as an unexpected error."""
    problem = cqt_problem(sample_rate, loss.cqt_octaves, loss.cqt_fmin, loss.cqt_hop,
                          loss.cqt_bins_per_octave) if loss.cqt_weight else None
    if problem:
        raise ConfigError(f"loss.cqt_*: {problem}")


def _check_stft_windows(name: str, windows: list[int]) -> None:
    """The window lengths of a spectral loss: powers of two, each once (the loss keeps one window per
    length; a repeated one failed when the loss was built)."""
    if not windows or len(set(windows)) != len(windows) or any(w < 4 or w & (w - 1) for w in windows):
        raise ConfigError(f"{name} must be distinct powers of two of at least 4")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        # TOML has no null, so inf was its spelling of "no limit" (optim.grad_clip): say what unsets a key
        if type(None) in args and is_real(value) and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}; none unsets it (null in YAML, "
                              "--set KEY=none)")
        others = [a for a in args if a is not type(None)]
        return _coerce(value, others[0], where)
    if hint is Any:
        return value
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if args and args[0] is str and isinstance(value, str):
                return [value]  # a single path may be written without brackets
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if not is_integer(value):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if not is_real(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # nan trained on as all-NaN weights with exit 0; no setting means inf
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build_section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"[{where}]: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:  # a section that checks itself (the codec's [model]) is named by its section
        return dataclasses.replace(cls(), **kwargs)
    except InvalidValue as exc:
        raise ConfigError(f"{where}: {exc}") from None


def config_from_dict(kind: str, data: dict[str, Any], base_dir: str | os.PathLike | None = None) -> Any:
    """A validated config of ``kind`` ("ndac" or "postfilter") from nested dicts; paths made absolute
    against ``base_dir`` when given."""
    if kind not in CONFIG_TYPES:
        raise ConfigError(f"unknown config kind {kind!r}")
    cls = CONFIG_TYPES[kind]
    sections = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in a {kind} "
                          f"config (known: {', '.join(sections)})")
    config = cls()
    for name in sections:
        if name in data:
            default_section = getattr(config, name)
            merged = {**dataclasses.asdict(default_section), **data[name]} if isinstance(data[name], dict) \
                else data[name]
            setattr(config, name, _build_section(type(default_section), merged, name))
    if base_dir is not None:
        _resolve_paths(config, Path(base_dir))
    config.validate()
    return config


def _resolve_paths(config: Any, base: Path) -> None:
    for section, key in _PATH_KEYS:
        sec = getattr(config, section, None)
        if sec is None or not hasattr(sec, key):
            continue
        value = getattr(sec, key)
        if isinstance(value, list):
            setattr(sec, key, [_absolute(v, base) for v in value])
        elif isinstance(value, str):
            setattr(sec, key, _absolute(value, base))


def _absolute(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def load_config(path: str | os.PathLike, kind: str, overrides: list[str] | None = None) -> Any:
    """Read a TOML/YAML config of ``kind``, apply ``overrides``, resolve paths, validate."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    data = _read_file(path)
    as_written = copy.deepcopy(data)
    overridden = _apply_overrides(data, list(overrides or []))
    try:
        return config_from_dict(kind, data, path.resolve().parent)
    except ConfigError as exc:
        if overridden and _own_error(kind, as_written, path) != str(exc):  # the file alone is fine, or fails
            raise OverrideError(f"--set {exc}") from None                # otherwise: --set's doing
        raise ConfigError(f"{path}: {exc}") from None


def _own_error(kind: str, data: dict[str, Any], path: Path) -> str | None:
    """What the config file alone, without ``--set``, is refused for (None: nothing). An error that
    ``--set`` brought in is named as the command line's, not as a line of the file."""
    try:
        config_from_dict(kind, data, path.resolve().parent)
    except ConfigError as exc:
        return str(exc)
    return None


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dicts (what a run folder's ``config.json`` records)."""
    return dataclasses.asdict(config)
