"""A frame-wise D0 whose phase runs on from frame to frame (an alternative to DAC's convolutional decoder).

Why. A decoder built only of convolutions (DAC's, and so NDAC's) is time-invariant at its frame rate: fed
the same code column every frame it can only repeat one frame of waveform, so a steady tone comes out on a
multiple of the frame rate (75 Hz here) unless the encoder codes where the waveform is in its cycle. The
built-in codec never learned that (docs/models.md, "Why the harmonics stick"). This decoder predicts, per
STFT bin and frame, a magnitude and a phase *advance*; the phase it plays is carried from the previous frame
and turned by the advance, so a steady column plays a steady partial at any frequency (the advance sets it).
It is the phase-vocoder idea run by a network: the Vocos family (ConvNeXt over frames, inverse STFT), with
the phase made recurrent.

With ``gate`` (the default) it also predicts a fresh phase and a gate that pulls the carried phase towards
it, so onsets can set their phases anew. Any gate short of shut makes a steady column periodic again (at
the body's frame rate), and trained on real audio with magnitude losses the gate opened: docs/models.md, "A
decoder that carries phase". Without it the phase only ever turns (a running sum of the advances).

Each bin carrying its own phase loses what a real partial has: the bins of one partial share its phase
(less pi per bin, for the frame-start reference of the STFT). Bins that start or drift apart cancel and beat:
resynthesised this way with the reference's own magnitudes and advances but each bin's own start, DAC's
mel distance is 1.37 on the validation clips (0 with the true starts). With ``lock`` each frame's phases
are pulled together across neighbouring bins (a magnitude-weighted sum over three bins, as a phase
vocoder's phase locking does), which takes that figure to 1.07 (:meth:`PhaseDecoder.lock`: why it does not
feed back); a lock is rotation-equivariant, so a steady column still plays a steady partial at any frequency.

The recurrence is the only part that is not a convolution: a chunked decode carries its state
(:class:`PhaseState`) from one chunk to the next, so chunks give what the whole file gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .framewise import ConvNeXtBlock

__all__ = ["PhaseDecoder", "PhaseState"]

_GATE_START = 4.0  # the gate's initial logit: sigmoid(4) = 0.982, so a new decoder starts mostly carrying phase
_LOG_MAG_START = -4.0  # initial log-magnitude: quiet, not silent (gradients reach every bin)
_LOG_MAG_MAX = 8.0  # exp(8) ~ 3,000 per bin: far above full scale, no overflow in the inverse STFT
_OVERLAP = 2  # frames of the inverse STFT's window (n_fft = 4 hops) on each side of a sample: 2


@dataclass
class PhaseState:
    """The unit phasor [B, F] of the last frame played, handed to the next chunk."""

    phasor: torch.Tensor


class PhaseDecoder(nn.Module):
    """Latent [B, latent_dim, T] at the codec's frame rate -> waveform [B, 1, T * hop_length].

    The body runs at ``upsample`` times the codec's frame rate; the inverse STFT uses a window of four of
    its hops (n_fft = 4 * hop_length / upsample), as Vocos does.
    """

    def __init__(self, latent_dim: int, hop_length: int, dim: int = 192, intermediate_dim: int = 576,
                 num_blocks: int = 5, kernel_size: int = 7, upsample: int = 2, gate: bool = True,
                 lock: bool = False) -> None:
        super().__init__()
        if gate and lock:
            raise ValueError("a phase lock is for a decoder without a gate")
        self.gated = gate
        self.locked = lock
        if hop_length % upsample:
            raise ValueError(f"hop_length {hop_length} is not a multiple of upsample {upsample}")
        self.upsample = upsample
        self.frame_hop = hop_length // upsample
        self.n_fft = 4 * self.frame_hop
        self.bins = self.n_fft // 2 + 1
        self.inp = nn.Conv1d(latent_dim, dim, kernel_size, padding=kernel_size // 2)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, kernel_size, temb_dim=1)
                                    for _ in range(num_blocks))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.outputs = 4 if gate else 2
        self.head = nn.Linear(dim, self.outputs * self.bins)
        nn.init.normal_(self.head.weight, std=0.01)
        with torch.no_grad():
            bias = self.head.bias.view(self.outputs, self.bins)
            bias.zero_()
            bias[0] = _LOG_MAG_START
            if gate:
                bias[3] = _GATE_START
        self.window: torch.Tensor
        self.bin_advance: torch.Tensor
        self.first_phase: torch.Tensor
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        # each bin's own phase advance over one hop, wrapped: a partial at the bin's centre needs no more
        advance = 2 * math.pi * torch.arange(self.bins, dtype=torch.float64) * self.frame_hop / self.n_fft
        self.register_buffer("bin_advance", torch.remainder(advance, 2 * math.pi).float(), persistent=False)
        # without a gate, the phase each bin starts a file with: fixed, and spread so the first frame is no click
        spread = torch.rand(self.bins, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.register_buffer("first_phase", (2 * math.pi * spread).float(), persistent=False)
        # (-1)^k turns a bin's frame-start phase into the frame-centre phase all bins of one partial share
        self.bin_sign: torch.Tensor
        self.register_buffer("bin_sign", 1.0 - 2.0 * (torch.arange(self.bins) % 2).float(), persistent=False)

    @property
    def context_frames(self) -> int:
        """Codec frames each side that reach one output frame through the convolutions."""
        k = self.inp.kernel_size[0]
        blocks: list[ConvNeXtBlock] = list(self.blocks)  # type: ignore[arg-type]
        spread = sum(int(block.dwconv.kernel_size[0]) - 1 for block in blocks)
        # the inverse STFT's window reaches _OVERLAP body frames past a chunk's edge
        return (k - 1) // 2 + math.ceil((spread / 2 + _OVERLAP) / self.upsample)

    def frames(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per bin and frame [B, F, N] (N = T * upsample): log-magnitude, advance deviation, and with a gate
        the fresh phase and the gate's logit."""
        h = self.inp(z)
        h = F.interpolate(h, scale_factor=self.upsample, mode="nearest")
        temb = h.new_zeros((h.shape[0], 1))
        for block in self.blocks:
            h = block(h, temb)
        out = self.head(self.norm(h.transpose(1, 2)))  # [B, N, outputs * F]
        return tuple(out.transpose(1, 2).reshape(h.shape[0], self.outputs, self.bins, -1).unbind(1))

    def phasors(self, deviation: torch.Tensor, fresh: torch.Tensor | None, gate_logit: torch.Tensor | None,
                state: PhaseState | None = None) -> torch.Tensor:
        """The unit phasors [B, F, N] carried, run frame by frame from ``state`` (None: the first fresh phase,
        or without a gate :attr:`first_phase`). Without a gate the phase only ever turns: a running sum. What
        is played is these, or with the lock :meth:`lock` of them."""
        if fresh is None or gate_logit is None:
            # summed in float64 and wrapped: float32 sums drift by hundredths of a radian over minutes
            angle = torch.cumsum((self.bin_advance[:, None] + deviation).double(), dim=-1)
            angle = torch.remainder(angle, 2 * math.pi).to(deviation.dtype)
            if state is None:
                start = torch.polar(torch.ones_like(self.first_phase), self.first_phase - self.bin_advance)
                start = start.expand(deviation.shape[:-1])
            else:
                start = state.phasor
            return start.unsqueeze(-1) * torch.polar(torch.ones_like(angle), angle)
        turn = torch.polar(torch.ones_like(deviation), self.bin_advance[:, None] + deviation)
        new = torch.polar(torch.ones_like(fresh), fresh)
        gate = torch.sigmoid(gate_logit)
        w = new[..., 0] if state is None else state.phasor.to(new.dtype)
        played = []
        for n in range(deviation.shape[-1]):
            g = gate[..., n]
            w = g * (w * turn[..., n]) + (1 - g) * new[..., n]
            w = w / (w.abs() + 1e-4)
            played.append(w)
        return torch.stack(played, dim=-1)

    @torch.no_grad()
    def lock(self, carried: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """The phasors played [B, F, N]: each frame's ``carried`` ones pulled together over three neighbouring
        bins, weighted by ``mag``, in the frame-centre reference all bins of one partial share.

        Frame by frame and without memory: what is carried on is the unlocked running phase. A lock fed back
        into the recurrence pulls harder (the oracle's 0.83 against 1.07), but it is chaotic: where
        neighbours all but cancel, a rounding difference grows until bins turn over (a third of a vibrato
        tone's bins within 3 s), so chunked and whole-file decoding, or two devices, would part. No gradient
        runs through it either: its normalisation divides by those same near-cancelling sums (gradients
        reached 10^4); the advances learn from a loss of their own (scripts/experiment_phase_decoder.py's
        advance loss), the magnitudes through the inverse STFT."""
        centred = mag * carried * self.bin_sign[:, None]
        below, above = F.pad(centred[..., :-1, :], (0, 0, 1, 0)), F.pad(centred[..., 1:, :], (0, 0, 0, 1))
        pulled = centred + 0.5 * (below + above)
        # a bin whose neighbours and itself are silent keeps the phase it carries
        pulled = pulled * self.bin_sign[:, None] + 1e-30 * carried
        return pulled / pulled.abs()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The whole waveform [B, 1, T * hop_length] of a latent [B, C, T]."""
        return self.decode_span(z, 0, z.shape[-1], None)[0]

    def decode_span(self, z: torch.Tensor, first: int, last: int,
                    state: PhaseState | None) -> tuple[torch.Tensor, PhaseState | None]:
        """The waveform of codec frames [first, last) of a window ``z`` [B, C, T] of the latent, and the
        state its next chunk starts from (the window's frames after ``last`` are context, not played).

        ``state`` None: the window starts the file. Otherwise ``state`` is what the previous
        chunk returned, and that chunk ended at ``first``: the recurrence picks up :data:`_OVERLAP` frames
        before ``first``, which the inverse STFT needs to finish the chunk's first samples, from the phasor
        the previous chunk had there.
        """
        up, hop = self.upsample, self.frame_hop
        start = 0 if state is None else first * up - _OVERLAP
        if start < 0:
            raise ValueError(f"a chunk from frame {first} of its window has too little context for its state")
        log_mag, deviation, *gated = (x[..., start:].float() for x in self.frames(z))
        fresh, gate_logit = gated if gated else (None, None)
        with torch.autocast(z.device.type, enabled=False):
            mag = log_mag.clamp(max=_LOG_MAG_MAX).exp()
            phasor = self.phasors(deviation, fresh, gate_logit, state)
            played = self.lock(phasor, mag) if self.locked else phasor
            audio = torch.istft(mag * played, self.n_fft, hop, window=self.window, center=True,
                                length=phasor.shape[-1] * hop)
        handed_on = last * up - _OVERLAP - 1 - start  # the frame before where the next chunk picks up
        # a chunk that ends before the overlap has begun hands on nothing: the next one starts the file too
        # a copy: a view would keep the chunk's whole [B, F, N] array alive until the next chunk
        new_state = PhaseState(phasor[..., handed_on].detach().clone()) if handed_on >= 0 else None
        a = (first * up - start) * hop
        return audio[:, None, a:a + (last - first) * up * hop], new_state
