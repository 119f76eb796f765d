"""The NCSN++ backbone: official key layout, FIR resampling, and the official outputs."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowdec_cli.checkpoints import load_lightning_state_dict
from flowdec_cli.ncsnpp import (
    NCSNpp,
    fir_downsample,
    fir_downsample_polyphase,
    fir_kernel_2d,
    fir_upsample,
    fir_upsample_polyphase,
    group_norm_silu,
)

FULL_PARAMS = 23_703_704  # backbone parameters of the released size, the Fourier W included


def _backbone_state(state):
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def _official_listing(reference_dir, name):
    return json.loads((reference_dir / "keys" / f"official_keys_{name}.json").read_text())


@pytest.mark.parametrize("name", ["flowdec_75m", "flowdec_25s"])
def test_released_size_keys_order_and_shapes(reference_dir, name):
    official = {k: v for k, v in _official_listing(reference_dir, name).items() if k.startswith("backbone.")}
    with torch.device("meta"):
        net = NCSNpp()
    ours = {"backbone." + k: list(v.shape) for k, v in net.state_dict().items()}
    assert list(ours) == list(official)  # same keys, same order
    assert ours == {k: v["shape"] for k, v in official.items()}
    assert all(v["dtype"] == "float32" for v in official.values())
    assert sum(v.numel() for v in net.state_dict().values()) == FULL_PARAMS


# -- FIR resampling against a literal restatement of upfirdn2d (zero insertion, padding, 2-D filter) ----


def _upfirdn2d_reference(x, kernel, up, down, pad0, pad1):
    b, c, h, w = x.shape
    z = x.new_zeros(b * c, 1, h * up, w * up)
    z[..., ::up, ::up] = x.reshape(b * c, 1, h, w)
    z = F.pad(z, (pad0, pad1, pad0, pad1))
    out = F.conv2d(z, torch.flip(kernel, [0, 1])[None, None].to(x.dtype))
    out = out[..., ::down, ::down]
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fir_matches_upfirdn2d_semantics(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 12, generator=g, dtype=dtype)
    k = fir_kernel_2d()
    assert torch.allclose(k, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])).double() / 64)
    down = fir_downsample(x, k)
    up = fir_upsample(x, k)
    assert down.dtype == dtype and up.dtype == dtype  # follows the input dtype
    assert down.shape == (2, 3, 8, 6) and up.shape == (2, 3, 32, 24)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    assert (down - _upfirdn2d_reference(x, k, 1, 2, 1, 1)).abs().max() < tol
    assert (up - _upfirdn2d_reference(x, k * 4, 2, 1, 2, 1)).abs().max() < tol


def test_polyphase_upsample_is_the_same_filter(monkeypatch):
    """The compiled path's element-wise form of the upsampler: same sums as upfirdn2d, same layout."""
    g = torch.Generator().manual_seed(1)
    k = fir_kernel_2d()
    x64 = torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64)
    reference = _upfirdn2d_reference(x64, k * 4, 2, 1, 2, 1)
    assert (fir_upsample_polyphase(x64, k) - reference).abs().max() < 1e-14
    x = x64.float().contiguous(memory_format=torch.channels_last)
    up = fir_upsample_polyphase(x, k)
    assert up.dtype == torch.float32 and up.is_contiguous(memory_format=torch.channels_last)
    assert (up.double() - reference).abs().max() < 1e-6
    # bfloat16 in: computed in float32 and rounded once, so within half a bfloat16 ulp of the exact sums
    xb = x64.bfloat16()
    exact = _upfirdn2d_reference(xb.double(), k * 4, 2, 1, 2, 1)
    upb = fir_upsample_polyphase(xb, k)
    assert upb.dtype == torch.bfloat16
    assert ((upb.double() - exact).abs() <= exact.abs() * 2.0 ** -8 * 1.01 + 1e-6).all()
    # eager runs keep the convolution; traced (compiled) runs take the element-wise form
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(fir_upsample(x, k), up)


@pytest.mark.parametrize("shape", [(16, 12), (9, 7)])
def test_polyphase_downsample_is_the_same_filter(monkeypatch, shape):
    """The compiled path's element-wise form of the downsampler: same sums as upfirdn2d, same layout,
    odd sizes included (the strided convolution's output length)."""
    g = torch.Generator().manual_seed(2)
    k = fir_kernel_2d()
    x64 = torch.randn(2, 3, *shape, generator=g, dtype=torch.float64)
    reference = _upfirdn2d_reference(x64, k, 1, 2, 1, 1)
    down64 = fir_downsample_polyphase(x64, k)
    assert down64.shape == reference.shape == fir_downsample(x64, k).shape
    assert (down64 - reference).abs().max() < 1e-14
    x = x64.float().contiguous(memory_format=torch.channels_last)
    down = fir_downsample_polyphase(x, k)
    assert down.dtype == torch.float32 and down.is_contiguous(memory_format=torch.channels_last)
    assert (down.double() - reference).abs().max() < 1e-6
    xb = x64.bfloat16()
    exact = _upfirdn2d_reference(xb.double(), k, 1, 2, 1, 1)
    downb = fir_downsample_polyphase(xb, k)
    assert downb.dtype == torch.bfloat16
    assert ((downb.double() - exact).abs() <= exact.abs() * 2.0 ** -8 * 1.01 + 1e-6).all()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(fir_downsample(x, k), down)


# -- official outputs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_backbone(reference_dir):
    state = load_lightning_state_dict(reference_dir / "flowdec_small" / "step=800000.ckpt")
    net = NCSNpp(nf=8).eval()
    net.load_state_dict(_backbone_state(state), strict=True)
    return net


@pytest.fixture(scope="module")
def small_io(reference_dir):
    return {k: torch.from_numpy(v) for k, v in np.load(reference_dir / "flowdec_small" / "io.npz").items()}


def test_small_velocity_matches_official(small_backbone, small_io):
    with torch.inference_mode():
        v = small_backbone(small_io["x0"], small_io["Y_feat"], small_io["t_v"])
    assert v.dtype == torch.complex64 and v.shape == small_io["v_t05"].shape
    err = (v - small_io["v_t05"]).abs().max().item()
    assert err < 5e-5, err


def test_float64_follows_input_dtype():
    """Everything, FIR kernels included, runs in the input's dtype (the official FIR kernel is always
    float32): a float64 copy is the float32 network's 'truth'."""
    torch.manual_seed(0)
    net = NCSNpp(nf=4, ch_mult=(1, 2, 2)).eval()
    net64 = NCSNpp(nf=4, ch_mult=(1, 2, 2)).eval()
    net64.load_state_dict(net.state_dict())
    net64.double()
    x = 0.3 * torch.randn(1, 1, 64, 16, dtype=torch.complex128)
    y = 0.3 * torch.randn(1, 1, 64, 16, dtype=torch.complex128)
    with torch.inference_mode():
        v64 = net64(x, y, torch.tensor([0.4]))
        v32 = net(x.to(torch.complex64), y.to(torch.complex64), torch.tensor([0.4]))
    assert v64.dtype == torch.complex128 and v32.dtype == torch.complex64
    assert (v64 - v32.to(torch.complex128)).abs().max() < 1e-5 * max(1.0, v64.abs().max().item())


def test_fast_settings_give_the_same_field(small_backbone, small_io):
    """channels-last and the fused block tails change only float rounding."""
    net = NCSNpp(nf=8)
    net.load_state_dict(small_backbone.state_dict())
    net.use_channels_last().set_fused()
    x, Y = small_io["x0"], small_io["Y_feat"]
    with torch.inference_mode():
        v = net(x, Y, small_io["t_v"])
        assert (v - small_io["v_t05"]).abs().max() < 5e-5
        # per-item times take the unfused bias path inside the fused tail
        v2 = net(torch.cat([x, x]), torch.cat([Y, Y]), torch.tensor([0.5, 0.2]))
        ref2 = small_backbone(x, Y, torch.tensor([0.2]))
    assert (v2[:1] - small_io["v_t05"]).abs().max() < 5e-5
    assert (v2[1:] - ref2).abs().max() < 5e-5


@pytest.mark.parametrize("offset", [0.0, 40.0])
def test_channels_last_group_norm_is_as_exact_as_nchw(offset):
    """The optimised (channels-last) path's GroupNorm + SiLU keeps float32 accuracy on large images:
    torch's own channels-last CPU kernel drifts as the image grows (2e-5 at 1 s of audio, 2.5e-4 at 5 s),
    the NCHW kernel does not; ours must not either, also for channels with means far from zero."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, 64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64))
        norm.bias.copy_(0.1 * torch.randn(64))
    x = (0.5 * torch.randn(2, 64, 768, 256) + offset + torch.linspace(-1, 1, 64)[None, :, None, None])
    xcl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = F.silu(F.group_norm(x.double(), 8, norm.weight.double(), norm.bias.double(), 1e-6))
        nchw = group_norm_silu(norm, x.clone())  # native kernel
        ours = group_norm_silu(norm, xcl)
    assert ours.is_contiguous(memory_format=torch.channels_last) and ours.dtype == torch.float32
    err_nchw = (nchw.double() - ref).abs().max().item()
    err_ours = (ours.double() - ref).abs().max().item()
    assert err_ours < 2e-6 * (1 + offset) and err_ours <= 2 * err_nchw + 1e-7, (err_ours, err_nchw)


def test_channels_last_group_norm_leaves_training_to_the_native_kernel():
    norm = torch.nn.GroupNorm(4, 16)
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = group_norm_silu(norm, x)
    out.sum().backward()
    assert x.grad is not None and torch.allclose(out, F.silu(norm(x)))


def test_time_is_broadcast_or_per_item():
    torch.manual_seed(0)
    net = NCSNpp(nf=4, ch_mult=(1, 1)).eval()
    x = torch.randn(2, 1, 16, 8, dtype=torch.complex64)
    y = torch.randn(2, 1, 16, 8, dtype=torch.complex64)
    with torch.inference_mode():
        both = net(x, y, torch.tensor([0.25, 0.75]))
        first = net(x[:1], y[:1], torch.tensor([0.25]))
        shared = net(x, y, torch.tensor(0.75))
    assert torch.allclose(both[:1], first, atol=1e-6)
    assert torch.allclose(both[1:], shared[1:], atol=1e-6)


def _recipe_state(keys: dict, seed: int, gn_keys: set[str]) -> dict[str, torch.Tensor]:
    """Weights of the flowdec_full_forward fixture, regenerated by key name (README section 3)."""
    state = {}
    for key, info in keys.items():
        if not key.startswith("backbone."):
            continue
        if key == "backbone.all_modules.0.W":
            state[key] = torch.randn(64, generator=torch.Generator().manual_seed(seed)) * 16
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")) + seed)
        r = torch.randn(info["shape"], generator=g, dtype=torch.float32)
        state[key] = 1 + 0.02 * r if key in gn_keys else 0.02 * r
    return state


@pytest.fixture(scope="module")
def full_recipe(reference_dir):
    meta = json.loads((reference_dir / "flowdec_full_forward" / "meta.json").read_text())
    keys = _official_listing(reference_dir, "flowdec_75m")
    state = _recipe_state(keys, meta["SEED"], set(meta["groupnorm_weight_keys"]))
    return meta, state


def test_full_size_recipe_weights_match_checksums(full_recipe):
    meta, state = full_recipe
    checks = meta["per_key_checks"]
    for key, value in state.items():
        assert list(value.shape) == checks[key]["shape"]
        assert value.double().sum().item() == pytest.approx(checks[key]["sum_f64"], rel=1e-9, abs=1e-9), key
        assert value.flatten()[0].item() == pytest.approx(checks[key]["first"], rel=1e-6, abs=1e-9), key


@pytest.mark.slow
def test_full_size_forward_matches_official(reference_dir, full_recipe):
    _, state = full_recipe
    io = {k: torch.from_numpy(v) for k, v in np.load(reference_dir / "flowdec_full_forward" / "io.npz").items()}
    net = NCSNpp().eval()
    net.load_state_dict(_backbone_state(state), strict=True)
    assert torch.equal(net.all_modules[0].W, io["W"])
    with torch.inference_mode():
        v = net(io["x_t"], io["Y"], io["t"])
    err = (v - io["v"]).abs().max().item()
    assert err < 5e-5, err


def test_traced_network_matches_the_official_field(small_backbone, small_io):
    """Under torch.compile the FIR resamplers take their element-wise forms; the traced official network
    (eager backend: the graph dynamo captures, without code generation) still gives the official field."""
    import torch._dynamo

    net = NCSNpp(nf=8)
    net.load_state_dict(small_backbone.state_dict())
    net.use_channels_last().set_fused()
    traced = torch.compile(net, backend="eager", fullgraph=False)
    try:
        with torch.inference_mode():
            v = traced(small_io["x0"], small_io["Y_feat"], small_io["t_v"])
    finally:
        torch._dynamo.reset()
    assert (v - small_io["v_t05"]).abs().max() < 5e-5
