"""NDAC: the DAC-style codec under FlowDec (encoder, residual vector quantizer, initial decoder D0).

The network is the ``DAC`` class of descript-audio-codec 1.0.0, rebuilt from the same constructor settings
so that its state-dict keys are the released ones (``encoder.block.…``, ``quantizer.quantizers.…``,
``decoder.model.…``, weight norm stored as ``weight_g``/``weight_v``). Lengths follow 1.0.0 exactly: the
encoder input is right-padded to a multiple of the hop, and each decoder stage with an odd stride loses
one sample (no ``output_padding``), so D0 returns ``frames*hop`` minus a small deficit, untrimmed.

For inference, :meth:`NDAC.fold_weight_norm` turns every g/v pair into one plain weight, computed with the
same kernel torch's weight norm uses, so folded outputs equal unfolded ones bit for bit.

Long inputs are coded in chunks (:meth:`NDAC.encode_chunked`, :meth:`NDAC.decode_chunked`): each chunk
carries enough context on both sides to cover the network's receptive field, and chunk borders fall on
frame borders, so frame *i* always starts at sample *i x hop* and the codes do not depend on the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .bitrate import nominal_bitrate
from .checkpoints import state_mismatch
from .exceptions import InvalidValue
from .ndac_config import DECODER_KINDS, NDACConfig
from .numeric import is_integer
from .phase_decoder import PhaseDecoder, PhaseState

__all__ = ["NDACConfig", "NDAC", "DECODER_KINDS"]

# --------------------------------------------------------------------------------------------------
# Building blocks (names and nesting follow dac/nn/layers.py and dac/model/dac.py of DAC 1.0.0)


class _WeightNormConv(nn.Module):
    """A weight-normalised convolution that keeps DAC's ``weight_g``/``weight_v`` parameter names.

    ``fold()`` replaces the pair by a plain ``weight`` for inference; training keeps the pair.
    """

    transposed = False

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        shape = (in_ch, out_ch, kernel_size) if self.transposed else (out_ch, in_ch, kernel_size)
        weight = torch.empty(shape)
        # torch's default conv init. DAC's init_weights means to set a truncated normal (std 0.02), but it
        # writes to the weight that weight norm derives, so released DAC models trained from this default;
        # the tiny std-0.02 weights shrink the signal layer by layer and collapse the codebooks.
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(weight, dim=(1, 2), keepdim=True))
        self.weight_v = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.register_buffer("folded", None, persistent=False)

    def effective_weight(self) -> torch.Tensor:
        if self.folded is not None:
            return self.folded
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def fold(self) -> None:
        with torch.no_grad():
            w = torch._weight_norm(self.weight_v, self.weight_g, 0).detach().clone()
        del self.weight_g, self.weight_v
        self.folded = w


class WNConv1d(_WeightNormConv):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(_WeightNormConv):
    transposed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # dac 1.0.0: no output_padding, so odd strides return one sample fewer.
        return F.conv_transpose1d(x, self.effective_weight(), self.bias, self.stride, self.padding, 0, 1,
                                  self.dilation)


class Snake1d(nn.Module):
    """x + sin^2(alpha x) / (alpha + 1e-9), per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        x = x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)
        return x.reshape(shape)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int = 1) -> None:
        super().__init__()
        pad = ((7 - 1) * dilation) // 2
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=pad),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        return x + y


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ResidualUnit(dim // 2, dilation=1),
            ResidualUnit(dim // 2, dilation=3),
            ResidualUnit(dim // 2, dilation=9),
            Snake1d(dim // 2),
            WNConv1d(dim // 2, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Encoder(nn.Module):
    def __init__(self, d_model: int, strides: list[int], d_latent: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride=stride))
        layers += [Snake1d(d_model), WNConv1d(d_model, d_latent, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(input_dim),
            WNConvTranspose1d(input_dim, output_dim, kernel_size=2 * stride, stride=stride,
                              padding=math.ceil(stride / 2)),
            ResidualUnit(output_dim, dilation=1),
            ResidualUnit(output_dim, dilation=3),
            ResidualUnit(output_dim, dilation=9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Decoder(nn.Module):
    def __init__(self, input_channel: int, channels: int, rates: list[int], d_out: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(input_channel, channels, kernel_size=7, padding=3)]
        output_dim = channels
        for i, stride in enumerate(rates):
            input_dim = channels // 2**i
            output_dim = channels // 2 ** (i + 1)
            layers.append(DecoderBlock(input_dim, output_dim, stride))
        layers += [Snake1d(output_dim), WNConv1d(output_dim, d_out, kernel_size=7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def lowest_index_of_max(x: torch.Tensor) -> torch.Tensor:
    """Index of the largest value along dim 1; an exact tie goes to the lowest index on every CPU and GPU
    (``max``/``argmax`` promise no particular index among equal values)."""
    best, at = x.max(1, keepdim=True)
    index = torch.arange(x.shape[1], device=x.device).expand_as(x)
    lowest = torch.where(x == best, index, x.shape[1]).min(1)[0]
    return torch.where(lowest < x.shape[1], lowest, at[:, 0])  # a NaN row: whatever max picked


class VectorQuantize(nn.Module):
    """One factorised codebook: project down, nearest L2-normalised code, look up the raw row, project up."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_size, self.codebook_dim = codebook_size, codebook_dim
        self.in_proj = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def distances(self, z_e: torch.Tensor) -> torch.Tensor:
        """Squared distances [B*T, codebook_size] of L2-normalised latents to L2-normalised codebook rows."""
        enc = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))
        book = F.normalize(self.codebook.weight)
        return enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1, keepdim=True).t()

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """Codes [B,T] of projected latents z_e [B,D,T]: the same arithmetic as DAC's ``decode_latents``."""
        return lowest_index_of_max(-self.distances(z_e)).reshape(z_e.shape[0], -1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.codebook.weight).transpose(1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z_e = self.in_proj(z)
        codes = self.nearest_codes(z_e)
        z_q = self.lookup(codes)
        commitment_loss = F.mse_loss(z_e, z_q.detach(), reduction="none").mean([1, 2])
        codebook_loss = F.mse_loss(z_q, z_e.detach(), reduction="none").mean([1, 2])
        z_q = z_e + (z_q - z_e).detach()  # straight-through; also the exact expression DAC feeds on
        return self.out_proj(z_q), commitment_loss, codebook_loss, codes, z_e


class ResidualVectorQuantize(nn.Module):
    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int,
                 quantizer_dropout: float = 0.0) -> None:
        super().__init__()
        self.n_codebooks, self.codebook_size = n_codebooks, codebook_size
        self.quantizer_dropout = quantizer_dropout
        self.quantizers = nn.ModuleList(
            [VectorQuantize(input_dim, codebook_size, codebook_dim) for _ in range(n_codebooks)])

    def forward(self, z: torch.Tensor, n_quantizers: int | None = None,
                n_quantizers_per_item: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(z_q, codes [B,k,T], latents, commitment_loss, codebook_loss), as DAC 1.0.0 returns them.

        In training mode a fraction ``quantizer_dropout`` of the batch uses a random number of codebooks,
        which is what makes every prefix of the codebooks decodable; ``n_quantizers_per_item`` [B] gives each
        item's count instead, in either mode (a trainer that draws them for a batch split over processes, or
        codes each item at its own rate).
        """
        n_q = self.n_codebooks if n_quantizers is None else int(n_quantizers)
        batch = z.shape[0]
        if n_quantizers_per_item is not None:
            n_q_per_item = n_quantizers_per_item.to(z.device)
            n_q = int(n_q_per_item.max()) if batch else n_q
        elif self.training:
            n_q_per_item = torch.full((batch,), self.n_codebooks, device=z.device)
            n_drop = int(batch * self.quantizer_dropout)
            if n_drop:
                n_q_per_item[:n_drop] = torch.randint(1, self.n_codebooks + 1, (n_drop,), device=z.device)
        else:
            n_q_per_item = torch.full((batch,), n_q, device=z.device)
        z_q: torch.Tensor | float = 0.0
        residual = z
        commitment = z.new_zeros(())
        codebook = z.new_zeros(())
        codes, latents = [], []
        for i, quantizer in enumerate(self.quantizers):
            if not self.training and i >= n_q:
                break
            z_q_i, commit_i, cb_i, codes_i, z_e_i = quantizer(residual)
            mask = (i < n_q_per_item).to(z.dtype)
            z_q = z_q + z_q_i * mask[:, None, None]
            residual = residual - z_q_i
            commitment = commitment + (commit_i * mask).mean()
            codebook = codebook + (cb_i * mask).mean()
            codes.append(codes_i)
            latents.append(z_e_i)
        return z_q, torch.stack(codes, dim=1), torch.cat(latents, dim=1), commitment, codebook  # type: ignore[return-value]

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The quantised latent of codes [B,k,T] using the first k codebooks (DAC's ``from_codes``)."""
        z_q: torch.Tensor | float = 0.0
        for i in range(codes.shape[1]):
            z_q = z_q + self.quantizers[i].out_proj(self.quantizers[i].lookup(codes[:, i, :]))
        return z_q  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------


def _kernel_width(conv: _WeightNormConv) -> int:
    return int(conv.effective_weight().shape[-1])


def _encoder_receptive_width(encoder: Encoder) -> int:
    """Input samples spanned by one encoder output (residual skips add nothing; strides widen later layers)."""
    width, jump = 0, 1
    for m in encoder.modules():
        if isinstance(m, WNConv1d):
            width += (_kernel_width(m) - 1) * m.dilation * jump
            jump *= m.stride
    return width + jump


def _decoder_receptive_width(decoder: Decoder) -> float:
    """Input frames spanned by the inputs that reach one decoder output."""
    width, upsampled = 0.0, 1
    for m in decoder.modules():
        if isinstance(m, WNConvTranspose1d):
            width += math.ceil(_kernel_width(m) / m.stride) / upsampled
            upsampled *= m.stride
        elif isinstance(m, WNConv1d):
            width += (_kernel_width(m) - 1) * m.dilation / upsampled
    return width


class NDAC(nn.Module):
    """The NDAC codec; ``encode``/``decode`` are the official operations, ``*_chunked`` their bounded-memory forms."""

    def __init__(self, config: NDACConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.encoder_dim, config.encoder_rates, int(config.latent_dim))  # type: ignore[arg-type]
        self.quantizer = ResidualVectorQuantize(int(config.latent_dim), config.n_codebooks,  # type: ignore[arg-type]
                                                config.codebook_size, config.codebook_dim, config.quantizer_dropout)
        self.decoder: Decoder | PhaseDecoder
        if config.decoder_kind == "phase":
            self.decoder = PhaseDecoder(int(config.latent_dim), config.hop_length,  # type: ignore[arg-type]
                                        config.phase_dim, config.phase_intermediate_dim, config.phase_blocks,
                                        upsample=config.phase_upsample, gate=config.phase_gate,
                                        lock=config.phase_lock)
        else:
            self.decoder = Decoder(int(config.latent_dim), config.decoder_dim, config.decoder_rates)  # type: ignore[arg-type]
        self._folded = False
        #: content hash of the unfolded weights (``checkpoints.weights_hash``), recorded by whoever loaded them
        #: before folding (:func:`flowdec_cli.models.load_ndac`); None until known
        self.weights_hash: str | None = None

    # -- attributes users read ------------------------------------------------------------------
    @property
    def folded(self) -> bool:
        """Whether :meth:`fold_weight_norm` has run (the weights are then inference-only)."""
        return self._folded

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def n_codebooks(self) -> int:
        return int(self.config.n_codebooks)

    @property
    def codebook_size(self) -> int:
        return int(self.config.codebook_size)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def bitrate(self, n_codebooks: int) -> float:
        """Nominal bit/s with the first ``n_codebooks`` codebooks (1 to the codec's count)."""
        return nominal_bitrate(self.sample_rate, self.hop_length, self._check_n_codebooks(n_codebooks),
                               self.codebook_size)

    def decoded_length(self, n_frames: int) -> int:
        """D0's output length for ``n_frames`` frames: per stage L <- L*s - (s mod 2), as in dac 1.0.0 (a
        phase decoder gives whole frames)."""
        if isinstance(self.decoder, PhaseDecoder):
            return max(n_frames, 0) * self.hop_length
        length = n_frames
        for s in self.config.decoder_rates:
            length = length * s - (s % 2)
        return max(length, 0)

    # -- inference preparation -----------------------------------------------------------------
    def fold_weight_norm(self) -> NDAC:
        """Replace every weight-norm pair by its plain weight (inference only; irreversible)."""
        for m in self.modules():
            if isinstance(m, _WeightNormConv) and m.folded is None:
                m.fold()
        self._folded = True
        return self

    def load_official_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strict load by key name that names every missing, unexpected or mis-shaped key."""
        problem = state_mismatch(self.state_dict(), state, source, "codec its config describes")
        if problem:
            raise InvalidValue(problem)
        self.load_state_dict(state, strict=True)

    # -- the official operations ---------------------------------------------------------------
    def pad_to_hop(self, audio: torch.Tensor) -> torch.Tensor:
        """Right zero-pad to a multiple of the hop, as DAC's ``preprocess``; audio must be [B,1,L] (a 1-D
        tensor failed deep inside the first convolution)."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise InvalidValue(f"audio must be shaped [batch, 1, samples], got {tuple(audio.shape)}")
        right = (-audio.shape[-1]) % self.hop_length
        return F.pad(audio, (0, right)) if right else audio

    def encode(self, audio: torch.Tensor, n_codebooks: int | None = None) -> torch.Tensor:
        """Codes int64 [B,k,T] of float32 audio [B,1,L] at the model rate (other float types are cast)."""
        k = self._check_n_codebooks(n_codebooks)
        x = self._encoder_input(audio)
        with torch.inference_mode():
            return self.quantizer(self.encoder(x), n_quantizers=k)[1]

    def code_margins(self, audio: torch.Tensor, n_codebooks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [B,k,T] as :meth:`encode` gives them, and for each the gap [B,k,T] between the second-nearest
        and the nearest codebook distance. Where a gap is below about 1e-4, float rounding (another CPU's
        kernels, another window) can pick the other entry: see docs/performance.md, "Codes across CPUs"."""
        k = self._check_n_codebooks(n_codebooks)
        x = self._encoder_input(audio)
        codes, gaps = [], []
        with torch.inference_mode():
            residual = self.encoder(x)
            quantizers: list[VectorQuantize] = list(self.quantizer.quantizers)[:k]  # type: ignore[assignment]
            for quantizer in quantizers:
                z_q_i, _c, _b, codes_i, z_e = quantizer(residual)
                d = quantizer.distances(z_e).topk(2, dim=1, largest=False)[0]
                gaps.append((d[:, 1] - d[:, 0]).reshape(codes_i.shape))
                codes.append(codes_i)
                residual = residual - z_q_i
        return torch.stack(codes, 1), torch.stack(gaps, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """D0's waveform float32 [B,1,L'] for codes [B,k,T] (any k <= n_codebooks), untrimmed."""
        self._check_codes(codes)
        if codes.shape[-1] == 0:
            raise InvalidValue("codes have no frames")
        with torch.inference_mode():
            return self.decoder(self.quantizer.from_codes(codes))

    # -- chunked forms ---------------------------------------------------------------------------
    @property
    def encoder_context_frames(self) -> int:
        """Frames of context each side that make chunked encoding equal to whole-file encoding."""
        return math.ceil(_encoder_receptive_width(self.encoder) / self.hop_length) + 1

    @property
    def decoder_context_frames(self) -> int:
        """Frames of context each side that cover D0's receptive field."""
        if isinstance(self.decoder, PhaseDecoder):
            return self.decoder.context_frames
        return math.ceil(_decoder_receptive_width(self.decoder)) + 1

    def encode_stream(self, blocks: Iterable[torch.Tensor], n_codebooks: int | None = None,
                      chunk_frames: int = 750) -> Iterator[torch.Tensor]:
        """Codes [B,k,t] for audio arriving in blocks [B,1,n] of any size, ``chunk_frames`` at a time.

        A chunk [a, b) is encoded from samples [(a-c)*hop, (b+c)*hop) with c = ``encoder_context_frames``
        (clipped to the file, the end zero-padded to the hop as :meth:`encode` does), so every code equals the
        whole-file code while memory holds one window (and the network at most :data:`ITEMS_AT_ONCE` of its
        channels at a time).
        """
        k = self._check_n_codebooks(n_codebooks)
        if chunk_frames <= 0:
            raise InvalidValue("chunk_frames must be positive")
        hop, ctx = self.hop_length, self.encoder_context_frames
        buf: torch.Tensor | None = None
        buf_start = 0  # sample index of buf[..., 0]
        a = 0  # first frame not yet emitted
        for block in blocks:
            buf = block if buf is None else torch.cat([buf, block], dim=-1)
            while buf_start + buf.shape[-1] >= (a + chunk_frames + ctx) * hop:
                lo = max(a - ctx, 0)
                window = buf[..., lo * hop - buf_start: (a + chunk_frames + ctx) * hop - buf_start]
                yield _in_groups(lambda w: self.encode(w, k), window)[..., a - lo: a - lo + chunk_frames]
                a += chunk_frames
                drop = max(a - ctx, 0) * hop - buf_start
                buf, buf_start = buf[..., drop:], buf_start + drop
        if buf is None:
            return
        total = buf_start + buf.shape[-1]
        n_frames = -(-total // hop)
        buf = F.pad(buf, (0, n_frames * hop - total))
        while a < n_frames:
            b = min(a + chunk_frames, n_frames)
            lo, hi = max(a - ctx, 0), min(b + ctx, n_frames)
            window = buf[..., lo * hop - buf_start: hi * hop - buf_start]
            yield _in_groups(lambda w: self.encode(w, k), window)[..., a - lo: b - lo]
            a = b
            drop = max(a - ctx, 0) * hop - buf_start
            buf, buf_start = buf[..., drop:], buf_start + drop

    def encode_chunked(self, audio: torch.Tensor, n_codebooks: int | None = None,
                       chunk_frames: int = 750) -> torch.Tensor:
        """:meth:`encode` in bounded memory; identical codes."""
        k = self._check_n_codebooks(n_codebooks)
        pieces = list(self.encode_stream([audio], k, chunk_frames))
        if not pieces:
            return torch.zeros((audio.shape[0], k, 0), dtype=torch.long, device=audio.device)
        return torch.cat(pieces, dim=-1)

    def decode_chunks(self, codes: torch.Tensor, chunk_frames: int = 750) -> Iterator[torch.Tensor]:
        """D0's output, piece by piece; the pieces concatenate to :meth:`decode`'s output (within float rounding).
        At most :data:`ITEMS_AT_ONCE` batch items (channels) go through the network together."""
        self._check_codes(codes)
        if isinstance(self.decoder, PhaseDecoder):
            yield from self._phase_decode_chunks(self.decoder, codes, chunk_frames)
            return
        hop = self.hop_length
        n_frames = codes.shape[-1]
        total = self.decoded_length(n_frames)
        ctx = self.decoder_context_frames
        for a, b in _spans(n_frames, chunk_frames):
            lo, hi = max(a - ctx, 0), min(b + ctx, n_frames)
            y = _in_groups(self.decode, codes[..., lo:hi])
            start = (a - lo) * hop
            stop = min((b - lo) * hop, total - lo * hop)
            yield y[..., start:stop]

    def _phase_decode_chunks(self, decoder: PhaseDecoder, codes: torch.Tensor,
                             chunk_frames: int) -> Iterator[torch.Tensor]:
        """:meth:`decode_chunks` for a phase decoder: each group of channels hands its phase on to its next
        chunk, so the chunks play what the whole file plays."""
        n_frames, ctx = codes.shape[-1], self.decoder_context_frames
        groups = range(0, codes.shape[0], ITEMS_AT_ONCE)
        states: list[PhaseState | None] = [None] * len(groups)
        for a, b in _spans(n_frames, chunk_frames):
            lo, hi = max(a - ctx, 0), min(b + ctx, n_frames)
            pieces = []
            for g, i in enumerate(groups):
                with torch.inference_mode():
                    z = self.quantizer.from_codes(codes[i:i + ITEMS_AT_ONCE, :, lo:hi])
                    y, states[g] = decoder.decode_span(z, a - lo, b - lo, states[g])
                pieces.append(y)
            yield torch.cat(pieces, dim=0)

    def decode_chunked(self, codes: torch.Tensor, chunk_frames: int = 750) -> torch.Tensor:
        """:meth:`decode` in bounded working memory (the output itself is whole)."""
        pieces = list(self.decode_chunks(codes, chunk_frames))
        if not pieces:
            return torch.zeros((codes.shape[0], 1, 0), dtype=torch.float32, device=codes.device)
        return torch.cat(pieces, dim=-1)

    # -- checks ----------------------------------------------------------------------------------
    def _check_n_codebooks(self, n_codebooks: int | None) -> int:
        if n_codebooks is not None and not is_integer(n_codebooks):  # 2.9 gave 2 codebooks and True 1
            raise InvalidValue(f"n_codebooks must be an int, got {n_codebooks!r}")
        k = self.n_codebooks if n_codebooks is None else int(n_codebooks)
        if not 1 <= k <= self.n_codebooks:
            raise InvalidValue(f"n_codebooks must be between 1 and {self.n_codebooks}, got {k}")
        return k

    def _encoder_input(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio`` checked, in the encoder's dtype, padded to whole frames: float audio [B,1,L] with at
        least one sample, all finite (NaN coded silently as all-zero codes, and other dtypes, arrays and empty
        audio failed deep inside torch)."""
        if not isinstance(audio, torch.Tensor):
            raise InvalidValue(f"audio must be a torch tensor [batch, 1, samples], got {type(audio).__name__}")
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise InvalidValue(f"audio must be shaped [batch, 1, samples], got {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise InvalidValue(f"audio must be float samples of full scale 1, got {audio.dtype}")
        if audio.shape[-1] == 0:
            raise InvalidValue("audio has no samples")
        if not bool(torch.isfinite(audio).all()):
            raise InvalidValue("audio holds NaN or infinite samples")
        return self.pad_to_hop(audio.to(next(self.encoder.parameters()).dtype))

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex() \
                or codes.dtype == torch.bool:
            raise InvalidValue("codes must be an integer torch tensor [batch, codebooks, frames]")
        if codes.dim() != 3:
            raise InvalidValue(f"codes must be [batch, codebooks, frames], got shape {tuple(codes.shape)}")
        self._check_n_codebooks(codes.shape[1])
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InvalidValue(f"codes must lie in [0, {self.codebook_size})")


#: Batch items (channels) that the chunked forms put through the network together: a file's channels arrive
#: as its batch, and the network's working memory grows with it (about 11 MB per channel-second decoded), so
#: without a bound a few kB declaring hundreds of channels would take gigabytes.
ITEMS_AT_ONCE = 4


def _in_groups(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``run(x)`` on at most :data:`ITEMS_AT_ONCE` items of the batch at a time, concatenated."""
    if x.shape[0] <= ITEMS_AT_ONCE:
        return run(x)
    return torch.cat([run(x[i:i + ITEMS_AT_ONCE]) for i in range(0, x.shape[0], ITEMS_AT_ONCE)], dim=0)


def _spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    if size <= 0:
        raise InvalidValue("chunk size must be positive")
    for a in range(0, n, size):
        yield a, min(a + size, n)
