"""Score the built-in model with codes found by search instead of by its encoder (an experiment; not shipped).

Runs scripts/evaluate_default_model.py with every NDAC.encode replaced by an analysis-by-synthesis search:
starting from the encoder's latent, STEPS Adam steps on the latent itself through the straight-through
residual quantizer at the entry's codebook count, minimising DAC's multi-scale mel loss of the decoded
sound against the input (plus WAVE x the L1 waveform error); the codes are then the quantizer's for the
latent found. Decoder, codebooks, side channel and postfilter are untouched, so the files decode with any
flowdec. docs/models.md, "Searching for codes", has what it measured.

    STEPS=10 WAVE=0 python scripts/experiment_code_search.py flowdec-small CORPUS --per-category 3 \\
        --max-seconds 4 --bitrates 3,7.5 --opus '' --nfe 6 --json out.json

Environment: STEPS (default 10), LR (Adam step as a fraction of the latent's standard deviation, 0.05),
WAVE (0). Every other argument goes to evaluate_default_model.py.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from flowdec_cli import ndac as ndac_module
from flowdec_cli.training.losses import MultiScaleMelLoss

STEPS = int(os.environ.get("STEPS", "10"))
LR = float(os.environ.get("LR", "0.05"))
WAVE = float(os.environ.get("WAVE", "0"))
_mel = MultiScaleMelLoss()


def searched_codes(self: ndac_module.NDAC, audio: torch.Tensor, n_codebooks: int | None = None) -> torch.Tensor:
    k = self._check_n_codebooks(n_codebooks)
    with torch.inference_mode(False), torch.enable_grad():
        x = self.pad_to_hop(audio).clone()
        with torch.no_grad():
            z0 = self.encoder(x)
        latent = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([latent], lr=LR * float(z0.std()))
        trainable = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)
        for _ in range(STEPS):
            y = self.decoder(self.quantizer(latent, n_quantizers=k)[0])
            n = min(y.shape[-1], x.shape[-1])
            loss = _mel(y[..., :n], x[..., :n]) + WAVE * F.l1_loss(y[..., :n], x[..., :n])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p, was in zip(self.parameters(), trainable):
            p.requires_grad_(was)
        with torch.no_grad():
            return self.quantizer(latent.detach(), n_quantizers=k)[1]


if __name__ == "__main__":
    ndac_module.NDAC.encode = searched_codes  # type: ignore[method-assign]
    target = Path(__file__).with_name("evaluate_default_model.py")
    sys.argv = [str(target)] + sys.argv[1:]
    runpy.run_path(str(target), run_name="__main__")
