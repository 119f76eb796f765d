"""The CUDA paths: the built-in model and both training stages on a GPU, against the CPU.

Every test here is marked ``gpu`` (``pytest -m gpu`` runs them alone); conftest.py skips them where torch
sees no CUDA device, so the CPU-only CI passes through them quickly.
"""

from __future__ import annotations

import numpy as np
import pytest

from flowdec_cli.models.catalogue import default_model_name
from flowdec_cli.pipeline import Codec
from flowdec_cli.training.config import config_from_dict
from flowdec_cli.training.ndac_trainer import NDACTrainer
from flowdec_cli.training.postfilter_trainer import PostfilterTrainer

from .conftest import tone
from .test_training_helpers import ndac_dict, postfilter_dict, write_clips, write_pairs_files

pytestmark = pytest.mark.gpu


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-30)))


def test_builtin_model_codes_and_decodes_on_cuda_as_on_the_cpu():
    """cuDNN's convolutions round differently from oneDNN's, so a code whose two nearest entries are
    almost tied may flip; nearly all must agree, and D0 of the same codes must agree to float rounding."""
    audio = tone(2.0, 48000, 1)
    cpu = Codec.load(default_model_name(), "cpu", precision="float32")
    gpu = Codec.load(default_model_name(), "cuda", precision="float32")
    header, codes_cpu = cpu.compress_array(audio, 48000, n_codebooks=10)
    _, codes_gpu = gpu.compress_array(audio, 48000, n_codebooks=10)
    assert codes_cpu.shape == codes_gpu.shape
    assert (codes_cpu == codes_gpu).mean() > 0.98
    d0_cpu = cpu.decompress_codes(header, codes_cpu, nfe=0)
    d0_gpu = gpu.decompress_codes(header, codes_cpu, nfe=0)
    assert _snr_db(d0_cpu, d0_gpu) > 60
    # the postfilter from the same seed: float32 on both, so the same sound to well under audibility
    pf_cpu = cpu.decompress_codes(header, codes_cpu, nfe=6, seed=3)
    pf_gpu = gpu.decompress_codes(header, codes_cpu, nfe=6, seed=3)
    assert _snr_db(pf_cpu, pf_gpu) > 40


def test_builtin_model_in_bfloat16_stays_close_to_float32():
    """``precision="auto"`` is bfloat16 on CUDA; docs/performance.md quotes its cost. Here it must stay
    a rounding difference, not a different sound."""
    audio = tone(2.0, 48000, 1, seed=1)
    exact = Codec.load(default_model_name(), "cuda", precision="float32")
    fast = Codec.load(default_model_name(), "cuda")
    header, codes = exact.compress_array(audio, 48000, n_codebooks=8)
    a = exact.decompress_codes(header, codes, nfe=6, seed=0)
    b = fast.decompress_codes(header, codes, nfe=6, seed=0)
    assert np.isfinite(b).all() and _snr_db(a, b) > 15


def test_both_training_stages_step_on_cuda_with_autocast(tmp_path):
    """A few steps of each stage under bfloat16 autocast: finite, falling losses and a usable export."""
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clips(clips, 4, seconds=0.3)
    cfg = config_from_dict("ndac", ndac_dict([str(clips)], tmp_path / "ndac", train=dict(amp="bf16")))
    ndac = NDACTrainer(cfg, device="cuda", quiet=True)
    ndac.run()
    losses = [h["loss"] for h in ndac.history]
    assert all(np.isfinite(losses)) and ndac.env.device.type == "cuda"
    assert (tmp_path / "ndac" / "model" / "flowdec.json").is_file()

    pairs = write_pairs_files(tmp_path / "pairs", 4, seconds=0.3, noise=0.05)[0]
    model = dict(backbone="framewise", dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8)
    cfg = config_from_dict("postfilter", postfilter_dict(
        [str(pairs)], tmp_path / "pf", [str(pairs)], model=model, data=dict(batch_size=4),
        optim=dict(lr=3e-3), train=dict(max_steps=12, log_every=2, val_every=12, amp="bf16")))
    pf = PostfilterTrainer(cfg, device="cuda", quiet=True)
    pf.run()
    losses = [h["loss"] for h in pf.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert (tmp_path / "pf" / "postfilter" / "model.safetensors").is_file()
