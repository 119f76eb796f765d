"""Shared fixtures: the golden reference folder, tiny random models, generated audio."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

# MKL, which computes torch.stft on x86 CPUs, picks its FFT kernels by CPU vendor and ISA: on Intel CPUs with
# AVX-512 the features differ from the fixtures' in the last bits (up to 2e-4 after the 0.3 power), on AMD
# ones they do not. Its conditional-numerical-reproducibility mode takes one code path on every x86 CPU, the
# one the fixtures were made with, so the bit-exact comparisons hold wherever the suite runs. MKL reads this
# when it first runs, so it is set before torch is imported.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import numpy as np
import pytest
import torch


def _reference_dir() -> Path | None:
    env = os.environ.get("FLOWDEC_REFERENCE")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "reference")
    for c in candidates:
        if (c / "README.md").is_file():
            return c
    return None


REFERENCE = _reference_dir()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if REFERENCE is None:
        pytest.skip("golden fixtures not found (../shared/reference or $FLOWDEC_REFERENCE)")
    return REFERENCE


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Models never come from, or go to, the user's real cache during tests; nothing is downloaded."""
    home = tmp_path_factory.getbasetemp() / "flowdec_home"
    monkeypatch.setenv("FLOWDEC_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FLOWDEC_MODEL", raising=False)  # the user's own default model stays out of tests
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_tiny_ndac(seed: int = 0, encoder_rates=(4, 4, 5, 8), n_codebooks: int = 10):
    from flowdec_cli.ndac import NDAC, NDACConfig

    torch.manual_seed(seed)
    cfg = NDACConfig(encoder_dim=4, encoder_rates=list(encoder_rates), latent_dim=16,
                     decoder_dim=2 ** (len(encoder_rates) + 1), decoder_rates=list(reversed(encoder_rates)),
                     n_codebooks=n_codebooks, codebook_size=1024, codebook_dim=4, sample_rate=48000)
    model = NDAC(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # no trivial values: perturb gains, Snake alphas and biases
        for name, p in model.named_parameters():
            if name.endswith(("weight_g", "alpha")):
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    return model


def write_model_folder(folder: Path, name: str, ndac, postfilter=None) -> Path:
    from flowdec_cli.models import save_ndac

    save_ndac(ndac, folder / "ndac")
    if postfilter is not None:
        postfilter.save(folder / "postfilter")
    (folder / "flowdec.json").write_text(json.dumps({"name": name, "licence": "test-only"}))
    return folder


@pytest.fixture(scope="session")
def tiny_codec_dir(tmp_path_factory) -> Path:
    """A codec-only model folder with a tiny random NDAC (75 Hz, 10 codebooks of 1024)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-75"
    return write_model_folder(folder, "tiny-75", make_tiny_ndac())


class PassCounter:
    """A ``progress`` callback of the pipeline's protocol that records what it is told: each bar's
    ``(total, unit)`` in ``totals`` and each update's count in ``updates``."""

    def __init__(self) -> None:
        self.totals: list[tuple[int, str]] = []
        self.updates: list[int] = []

    def __call__(self, desc: str, total: int, unit: str) -> PassCounter:
        self.totals.append((total, unit))
        return self

    def update(self, n: int = 1) -> None:
        self.updates.append(n)

    def close(self) -> None:
        pass


def tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: harmonic series with a vibrato, a chirp and a little noise, per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    out = []
    for c in range(channels):
        f0 = 140.0 * (1 + 0.3 * c) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 12))
        x = x + 0.1 * np.sin(2 * np.pi * (200 * t + 0.5 * (min(sr / 2.2, 16000) - 200) / max(seconds, 1e-9) * t**2))
        x = x + 0.005 * rng.standard_normal(len(t))
        out.append(x)
    return np.stack(out, 1).astype(np.float32)


def load_script(name: str) -> Iterator[ModuleType]:
    """scripts/NAME.py as a module, for a fixture to yield: the scripts are not a package. It is in
    sys.modules while in use, because dataclasses resolve their annotations through their module."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


@pytest.fixture()
def experiment_scripts(monkeypatch) -> Iterator[None]:
    """scripts/ on the import path for one test, for the experiment scripts that import one another as
    modules (``import experiment_pitch_in_codes``); none of them stays in sys.modules for other tests."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            if name.startswith("experiment_"):
                del sys.modules[name]


def pytest_collection_modifyitems(config, items):
    """The ``gpu`` marker means what pyproject.toml says: needs a CUDA device, skipped where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
