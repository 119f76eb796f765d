"""The postfilter feature map Phi and its inverse against the official fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowdec_cli.checkpoints import load_lightning_state_dict
from flowdec_cli.features import FeatureMap, num_frames, pad_frames, padded_frames, peak_normfac


def _io(reference_dir, name):
    return {k: torch.from_numpy(v) for k, v in np.load(reference_dir / name / "io.npz").items()}


@pytest.fixture(scope="module")
def feature_map(reference_dir) -> FeatureMap:
    """The feature map with the window taken from the fixture checkpoint, as the model does."""
    state = load_lightning_state_dict(reference_dir / "flowdec_small" / "step=800000.ckpt")
    fm = FeatureMap()
    fm.load_state_dict({"complex_stft.window": state["feature_extractor.complex_stft.window"]})
    return fm


def test_window_is_the_symmetric_hann_of_the_checkpoint(reference_dir):
    state = load_lightning_state_dict(reference_dir / "flowdec_small" / "step=800000.ckpt")
    w = state["feature_extractor.complex_stft.window"]
    assert w.shape == (1534,) and w.dtype == torch.float32
    assert torch.equal(FeatureMap().complex_stft.window, w)
    assert w[0] == 0 and w[-1] == 0  # symmetric, not torch.hann_window's periodic default


@pytest.mark.parametrize("fixture, signal", [("flowdec_small", "y"), ("pipeline_small", "ndac_decoded")])
def test_features_bit_identical_to_official(reference_dir, feature_map, fixture, signal):
    io = _io(reference_dir, fixture)
    Y, normfac, frames = feature_map(io[signal])
    assert Y.dtype == torch.complex64 and Y.shape == io["Y_feat"].shape
    assert frames == num_frames(io[signal].shape[-1])
    assert torch.equal(normfac, io["normfac"])
    assert torch.equal(Y, io["Y_feat"])  # same torch.stft, same window, same operation order


def test_shapes_for_one_second(feature_map):
    Y, normfac, frames = feature_map(torch.zeros(2, 1, 48000).uniform_(-0.5, 0.5))
    assert (frames, Y.shape) == (126, (2, 1, 768, 128))
    assert normfac.shape == (2, 1, 1)
    assert torch.count_nonzero(Y[..., 126:]) == 0  # right zero padding to a multiple of 64


def test_round_trip_without_network(reference_dir, feature_map):
    y = _io(reference_dir, "flowdec_small")["y"]
    Y, normfac, frames = feature_map(y)
    back = feature_map.inverse(Y, normfac, y.shape[-1], frames)
    assert back.shape == y.shape
    assert (back - y).abs().max() < 1e-6


def test_peak_normalisation_zero_rule():
    y = torch.zeros(3, 1, 1000)
    y[1] = 1e-9  # torch.isclose(1e-9, 0) with default atol 1e-8: treated as silence
    y[2, 0, 10] = -0.25
    nf = peak_normfac(y)
    assert nf.flatten().tolist() == [1.0, 1.0, 0.25]


def test_explicit_normfac_overrides_the_peak(feature_map):
    y = torch.randn(1, 1, 9000) * 0.1
    Y1, _, _ = feature_map(y, torch.tensor([[[2.0]]]))
    Y2, _, _ = feature_map(y / 2.0, torch.tensor([[[1.0]]]))
    assert torch.equal(Y1, Y2)


def test_padding_helpers():
    assert [padded_frames(n) for n in (1, 63, 64, 65, 126)] == [64, 64, 64, 128, 128]
    spec = torch.ones(1, 1, 4, 70, dtype=torch.complex64)
    assert pad_frames(spec).shape[-1] == 128 and pad_frames(spec[..., :64]).shape[-1] == 64


def test_frames_of_a_segment_equal_whole_file_frames(reference_dir, feature_map):
    """Chunk features come from the chunk's real neighbours, so they equal the whole-file frames."""
    y = _io(reference_dir, "flowdec_small")["y"]
    Y, normfac, frames = feature_map(y)
    half = feature_map.n_fft // 2
    padded = torch.nn.functional.pad(y.reshape(1, -1), (half, half), mode="reflect")
    for first, n in [(0, 64), (40, 64), (frames - 64, 64)]:
        lo, hi = feature_map.segment_span(first, n)
        seg = padded[:, lo + half: hi + half].reshape(1, 1, -1)
        assert torch.equal(feature_map.frames(seg, normfac), Y[..., first:first + n])
