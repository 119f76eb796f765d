"""The constructor settings of an NDAC codec, apart from the network, so that configs can be read and checked
without torch.

The fields are descript-audio-codec 1.0.0 ``DAC``'s (``metadata["kwargs"]`` of a weights.pth) and ours for a
decoder that carries phase. :class:`NDACConfig` is the one place their bounds live: model folders and release
conversion build it from a file's settings, and the training config's ``[model]`` section is the same class
with NDAC-75-shaped defaults (``flowdec_cli.training.config.NDACModelConfig``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .exceptions import InvalidValue
from .numeric import is_integer, is_whole

__all__ = ["NDACConfig", "DECODER_KINDS", "MAX_PARAMETERS"]

#: D0's kinds: DAC's convolutional decoder, or ours, :class:`~flowdec_cli.phase_decoder.PhaseDecoder`
DECODER_KINDS = ("dac", "phase")
_PHASE_FIELDS = ("phase_dim", "phase_intermediate_dim", "phase_blocks", "phase_upsample")
_PHASE_BOUNDS = {"phase_blocks": 64, "phase_upsample": 16}


MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32; the released codecs have about 65 million
_BOUNDS = {"encoder_dim": 4096, "latent_dim": 65_536, "decoder_dim": 65_536, "n_codebooks": 1024,
           "codebook_size": 1 << 20, "codebook_dim": 4096, "sample_rate": 1_000_000}


def _whole_numbers(name: str, value: Any) -> list[int]:
    """``value`` as a list of ints, or a ValueError that names the field, as every config error does."""
    if not isinstance(value, (list, tuple)) or not all(is_whole(r) for r in value):
        raise InvalidValue(f"{name} must be a list of whole numbers, got {value!r}")
    return [int(r) for r in value]


@dataclass
class NDACConfig:
    """Constructor settings of descript-audio-codec 1.0.0 ``DAC`` (``metadata["kwargs"]`` of a weights.pth)."""

    encoder_dim: int = 64
    encoder_rates: list[int] = field(default_factory=lambda: [2, 4, 8, 8])
    latent_dim: int | None = None
    decoder_dim: int = 1536
    decoder_rates: list[int] = field(default_factory=lambda: [8, 8, 4, 2])
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_dropout: float = 0.0
    sample_rate: int = 44100
    # ours, not DAC's: "phase" puts a frame-wise decoder that carries phase from frame to frame in D0's place
    # (flowdec_cli.phase_decoder); its sizes follow. The decoder_* settings above then go unused.
    decoder_kind: str = "dac"
    phase_dim: int = 192
    phase_intermediate_dim: int = 576
    phase_blocks: int = 5
    phase_upsample: int = 2
    phase_gate: bool = True
    phase_lock: bool = False

    def __post_init__(self) -> None:
        self.encoder_rates = _whole_numbers("encoder_rates", self.encoder_rates)
        self.decoder_rates = _whole_numbers("decoder_rates", self.decoder_rates)
        if self.latent_dim is None:
            self.latent_dim = self.encoder_dim * (2 ** len(self.encoder_rates))
        self.quantizer_dropout = float(self.quantizer_dropout or 0.0)
        if math.prod(self.encoder_rates) != math.prod(self.decoder_rates):
            raise InvalidValue(f"encoder rates {self.encoder_rates} and decoder rates {self.decoder_rates} "
                             "have different products")
        for name in ("encoder_dim", "decoder_dim", "n_codebooks", "codebook_size", "codebook_dim", "sample_rate"):
            if int(getattr(self, name)) <= 0:
                raise InvalidValue(f"{name} must be positive, got {getattr(self, name)}")
        if int(self.codebook_size) < 2:  # one entry carries no bits: no .fdc could hold its codes
            raise InvalidValue(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.decoder_kind not in DECODER_KINDS:
            raise InvalidValue(f"decoder_kind must be one of {', '.join(DECODER_KINDS)}, got {self.decoder_kind!r}")
        for name in _PHASE_FIELDS:  # blocks and upsampling set the work per frame: bounded, as sizes are
            v, top = getattr(self, name), _PHASE_BOUNDS.get(name, 65_536)
            if not is_integer(v) or not 1 <= v <= top:
                raise InvalidValue(f"config {name} = {v!r} is out of range [1, {top}]")
        for name in ("phase_gate", "phase_lock"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidValue(f"config {name} must be true or false, got {getattr(self, name)!r}")
        if self.decoder_kind == "phase" and self.phase_gate and self.phase_lock:
            raise InvalidValue("config phase_lock is for a decoder without a gate: set phase_gate = false")
        if self.decoder_kind == "phase" and (self.hop_length % self.phase_upsample
                                             or self.hop_length // self.phase_upsample < 2):
            raise InvalidValue(f"config phase_upsample {self.phase_upsample} does not divide the hop "
                               f"{self.hop_length} into hops of at least 2 samples")
        self._check_bounds()

    def _check_bounds(self) -> None:
        """Refuse sizes no codec has before anything is allocated (a config is data from a file)."""
        for name, top in _BOUNDS.items():
            v = getattr(self, name)
            if not is_integer(v) or not 1 <= v <= top:
                raise InvalidValue(f"config {name} = {v!r} is out of range [1, {top}]")
        for name in ("encoder_rates", "decoder_rates"):
            rates = getattr(self, name)
            if not 1 <= len(rates) <= 12 or not all(1 <= r <= 64 for r in rates):
                raise InvalidValue(f"config {name} = {rates} must be 1 to 12 strides of 1 to 64")
        if self.encoder_dim * 2 ** len(self.encoder_rates) > 65_536:
            raise InvalidValue(f"config encoder_dim {self.encoder_dim} doubles past 65536 over "
                             f"{len(self.encoder_rates)} stages")
        if self.decoder_dim < 2 ** len(self.decoder_rates):
            raise InvalidValue(f"config decoder_dim {self.decoder_dim} is halved {len(self.decoder_rates)} times "
                             "and must stay at least 1")
        n = self.parameter_count()
        if n > MAX_PARAMETERS:
            raise InvalidValue(f"config describes {n:.3g} parameters (more than {MAX_PARAMETERS:.0e}); "
                             "not a codec this package can build")

    def parameter_count(self) -> int:
        """About how many weights the model has (the big convolutions; no allocation)."""
        d, lat = self.encoder_dim, int(self.latent_dim)  # type: ignore[arg-type]
        n = 7 * d
        for s in self.encoder_rates:
            n += 3 * 8 * d * d + 2 * s * d * 2 * d
            d *= 2
        n += 3 * d * lat
        if self.decoder_kind == "phase":
            d, m = self.phase_dim, self.phase_intermediate_dim
            bins = 2 * self.hop_length // self.phase_upsample + 1
            outputs = 4 if self.phase_gate else 2
            n += 7 * lat * d + self.phase_blocks * (2 * d * m + 10 * d) + outputs * bins * (d + 1)
        else:
            c = self.decoder_dim
            n += 7 * lat * c
            for s in self.decoder_rates:
                n += 2 * s * c * (c // 2) + 3 * 8 * (c // 2) ** 2
                c //= 2
        n += self.n_codebooks * (2 * lat * self.codebook_dim + self.codebook_size * self.codebook_dim)
        return n

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> NDACConfig:
        """Build from a DAC kwargs dict, ignoring keys DAC's constructor does not take (as ``DAC.load`` does)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in kwargs.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """The settings; DAC's decoder's as DAC writes them (none of ours, so files stay as they were)."""
        out = asdict(self)
        if self.decoder_kind == "dac":
            for name in ("decoder_kind", "phase_gate", "phase_lock", *_PHASE_FIELDS):
                del out[name]
        return out

    @property
    def hop_length(self) -> int:
        return math.prod(self.encoder_rates)
