"""The Postfilter model: official fixtures, loading (EMA/raw, strict), our folder format, options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowdec_cli.checkpoints import CheckpointError, load_lightning_state_dict
from flowdec_cli.postfilter import Postfilter, infer_architecture

from .conftest import PassCounter, tone

ATOL_WAVE = 5e-5  # README section 5: postfilter waveforms
ATOL_FIELD = 5e-5  # velocity
ATOL_FEAT = 5e-4  # ODE states (feature domain; tiny bins are poorly conditioned)


def _io(reference_dir, name):
    return {k: torch.from_numpy(v) for k, v in np.load(reference_dir / name / "io.npz").items()}


@pytest.fixture(scope="module")
def ckpt(reference_dir):
    return reference_dir / "flowdec_small" / "step=800000.ckpt"


@pytest.fixture(scope="module")
def small(ckpt) -> Postfilter:
    return Postfilter.from_lightning_checkpoint(ckpt)


@pytest.fixture(scope="module")
def small_io(reference_dir):
    return _io(reference_dir, "flowdec_small")


# -- loading --------------------------------------------------------------------------------------------


def test_checkpoint_architecture_is_inferred(small):
    cfg = small.config
    assert cfg["type"] == "flowdec_postfilter" and small.sample_rate == 48000
    assert (cfg["nf"], cfg["ch_mult"], cfg["num_res_blocks"], cfg["fourier_size"]) == (8, [4, 4, 4, 2], 1, 8)
    assert (cfg["n_fft"], cfg["hop_length"], cfg["alpha"], cfg["beta"], cfg["pad_multiple"]) == \
        (1534, 384, 0.3, 0.33, 64)
    assert small.sigma_y.dtype == torch.float64 and small.sigma_y.shape == (768, 1)
    assert sum(v.numel() for k, v in small.state_dict().items() if k.startswith("backbone.")) == 378_920


def test_ema_weights_by_default_raw_on_request(ckpt, small, small_io):
    ema = load_lightning_state_dict(ckpt, ema=True)
    assert all(torch.equal(small.state_dict()[k], v) for k, v in ema.items())
    raw = Postfilter.from_lightning_checkpoint(ckpt, ema=False)
    raw_state = load_lightning_state_dict(ckpt, ema=False)
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in raw_state.items())
    assert not torch.equal(raw.state_dict()["backbone.all_modules.4.Conv_0.weight"],
                           small.state_dict()["backbone.all_modules.4.Conv_0.weight"])
    for key in ("sigma_y", "sigma_x", "feature_extractor.complex_stft.window", "backbone.all_modules.0.W"):
        assert torch.equal(raw.state_dict()[key], small.state_dict()[key])  # constants are shared
    v_raw = raw.velocity(small_io["x0"], small_io["Y_feat"], 0.5)
    assert (v_raw - small_io["v_t05"]).abs().max() > 0.01  # the wrong dict fails loudly


@pytest.mark.parametrize("name", ["flowdec_75m", "flowdec_25s", "flowdec_75s_globsigy"])
def test_state_dict_equals_official_listing(reference_dir, name):
    official = json.loads((reference_dir / "keys" / f"official_keys_{name}.json").read_text())
    sigma = torch.tensor(0.66) if "globsigy" in name else torch.zeros(768, 1, dtype=torch.float64)
    with torch.device("meta"):
        model = Postfilter(sigma_y=sigma)
    ours = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in model.state_dict().items()}
    assert len(ours) == 265
    assert list(ours) == list(official)
    assert ours == official


def test_strict_load_names_every_mismatch(ckpt):
    state = load_lightning_state_dict(ckpt)
    bad = dict(state)
    del bad["backbone.all_modules.7.Dense_0.bias"]
    bad["backbone.all_modules.7.extra"] = torch.zeros(3)
    bad["backbone.output_layer.weight"] = torch.zeros(2, 4, 3, 3)
    model = Postfilter(nf=8)
    with pytest.raises(CheckpointError) as info:
        model.load_official_state_dict(bad, "test.ckpt")
    msg = str(info.value)
    assert "3 problems" in msg
    for key in ("missing backbone.all_modules.7.Dense_0.bias", "unexpected backbone.all_modules.7.extra",
                "shape of backbone.output_layer.weight"):
        assert key in msg


def test_architecture_inference_rejects_foreign_dicts(ckpt):
    state = load_lightning_state_dict(ckpt)
    with pytest.raises(CheckpointError, match="no 'sigma_y'"):
        infer_architecture({k: v for k, v in state.items() if k != "sigma_y"})
    torch.manual_seed(0)
    other = Postfilter(nf=4, ch_mult=(1, 2, 2), num_res_blocks=2).state_dict()
    assert infer_architecture(other) == dict(nf=4, ch_mult=(1, 2, 2), num_res_blocks=2, fourier_size=4,
                                             n_fft=1534)


def test_folder_round_trip(tmp_path, small):
    folder = small.save(tmp_path / "pf")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    config = json.loads((folder / "config.json").read_text())
    assert config == small.config
    again = Postfilter.from_folder(folder)
    assert again.config == small.config
    a, b = small.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert Postfilter.load(folder).config == small.config


def test_global_sigma_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Postfilter(nf=4, ch_mult=(1, 1), sigma_y=torch.tensor(0.66))
    assert model.state_dict()["sigma_y"].shape == ()
    again = Postfilter.from_folder(model.save(tmp_path / "glob"))
    assert again.sigma_y.shape == () and again.sigma_y.dtype == torch.float32
    y = torch.sin(torch.arange(6000) / 7.0)[None, None] * 0.3
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(model.enhance(y, 2, "euler", generator=g1), again.enhance(y, 2, "euler", generator=g2))


def test_folder_with_wrong_type_is_rejected(tmp_path, small):
    folder = small.save(tmp_path / "pf")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["type"] = "ndac"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="flowdec_postfilter"):
        Postfilter.from_folder(folder)


def test_sigma_y_stays_float64_through_dtype_moves():
    curve = torch.linspace(0.2, 0.6, 768, dtype=torch.float64)[:, None] + 1e-12
    model = Postfilter(nf=4, ch_mult=(1, 1), sigma_y=curve)
    for move in (model.float, model.half, lambda: model.to(torch.float32)):
        move()
        assert model.sigma_y.dtype == torch.float64 and torch.equal(model.sigma_y, curve)


def test_invalid_folder_configs_are_rejected(tmp_path):
    model = Postfilter(nf=4, ch_mult=(1, 1))
    folder = model.save(tmp_path / "pf")
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in [("sigma_y_dtype", "load"), ("sample_rate", 44100), ("version", 99), ("nf", None)]:
        bad = dict(cfg, **{key: value})
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="invalid postfilter config"):
            Postfilter.from_folder(folder)


def test_a_folder_config_cannot_ask_for_more_than_its_weights_hold(tmp_path):
    """The model is built from its config before the weights are checked: a 12,000-tap fir_kernel (built
    as its outer product) took 2.5 GB, and any config far larger than its weights file is refused first."""
    model = Postfilter(nf=4, ch_mult=(1, 1))
    folder = model.save(tmp_path / "pf")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, fir_kernel=[1] * 12000)))
    with pytest.raises(CheckpointError, match=r"fir_kernel = .* must be 1 to 16 finite numbers"):
        Postfilter.from_folder(folder)
    (folder / "config.json").write_text(json.dumps(dict(cfg, nf=512, ch_mult=[4, 4, 4, 2])))
    with pytest.raises(CheckpointError, match=r"pf: its config describes about .* weights, but its weights "
                                              r"file holds \d+; the two do not belong together"):
        Postfilter.from_folder(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    assert isinstance(Postfilter.from_folder(folder), Postfilter)


# -- official outputs ------------------------------------------------------------------------------------


def test_features_start_point_and_velocity(small, small_io):
    Y, normfac, frames = small.features(small_io["y"])
    assert torch.equal(Y, small_io["Y_feat"]) and torch.equal(normfac, small_io["normfac"]) and frames == 126
    assert torch.equal(small.sigma_y, small_io["sigma_y"])
    v = small.velocity(small_io["x0"], small_io["Y_feat"], 0.5)
    assert v.dtype == torch.complex64
    assert (v - small_io["v_t05"]).abs().max() < ATOL_FIELD
    v_tensor_t = small.velocity(small_io["x0"], small_io["Y_feat"], torch.tensor([0.5]))
    assert torch.equal(v, v_tensor_t)


def test_enhance_midpoint_n3_matches_official(small, small_io, monkeypatch):
    finals = []
    inverse = small.feature_extractor.inverse

    def capture(feats, *args, **kwargs):
        finals.append(feats.clone())
        return inverse(feats, *args, **kwargs)

    monkeypatch.setattr(small.feature_extractor, "inverse", capture)
    passes = PassCounter()
    out = small.enhance(small_io["y"], nfe=6, solver="midpoint", noise=small_io["noise"], progress=passes)
    assert out.shape == small_io["y"].shape and out.dtype == torch.float32
    assert sum(passes.updates) == 6
    assert (finals[0] - small_io["X_final_midpoint_N3"]).abs().max() < ATOL_FEAT
    assert (out - small_io["enhanced_midpoint_N3"]).abs().max() < ATOL_WAVE


def test_enhance_euler_n2_matches_official(small, small_io):
    out = small.enhance(small_io["y"], nfe=2, solver="euler", noise=small_io["noise"])
    assert (out - small_io["enhanced_euler_N2"]).abs().max() < ATOL_WAVE


def test_pipeline_postfilter_part_matches_official(reference_dir, small):
    io = _io(reference_dir, "pipeline_small")
    Y, normfac, _ = small.features(io["ndac_decoded"])
    assert torch.equal(Y, io["Y_feat"]) and torch.equal(normfac, io["normfac"])
    out = small.enhance(io["ndac_decoded"], nfe=6, noise=io["noise"])
    assert out.shape == io["enhanced"].shape
    assert (out - io["enhanced"]).abs().max() < ATOL_WAVE
    assert (out[..., :62400] - io["enhanced_trimmed"]).abs().max() < ATOL_WAVE


# -- behaviour -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Postfilter:
    torch.manual_seed(0)
    return Postfilter(nf=4, ch_mult=(1, 1))


def test_generator_gives_repeatable_output(tiny):
    y = torch.randn(2, 1, 5000) * 0.1
    a = tiny.enhance(y, 2, "euler", generator=torch.Generator().manual_seed(1))
    b = tiny.enhance(y, 2, "euler", generator=torch.Generator().manual_seed(1))
    c = tiny.enhance(y, 2, "euler", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = torch.randn((2, 1, 768, 64), dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, tiny.enhance(y, 2, "euler", noise=noise))


def test_shapes_nfe_zero_and_errors(tiny):
    y = torch.randn(3000) * 0.1
    assert tiny.enhance(y, 2, "euler").shape == (3000,)
    assert tiny.enhance(y[None], 2, "euler").shape == (1, 3000)
    assert torch.equal(tiny.enhance(y, 0), y)
    assert tiny.enhance(torch.zeros(1, 1, 100), 2, "euler").shape == (1, 1, 100)  # shorter than the pad
    with pytest.raises(ValueError, match="even"):
        tiny.enhance(y, 3)
    with pytest.raises(ValueError, match="noise must be shaped"):
        tiny.enhance(y, 2, "euler", noise=torch.zeros(1, 1, 768, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="NaN"):
        tiny.enhance(torch.full((1, 1, 2000), float("nan")), 2, "euler")
    with pytest.raises(ValueError, match="shaped"):
        tiny.enhance(torch.zeros(2, 2, 100), 2, "euler")


def test_silence_stays_finite(tiny):
    out = tiny.enhance(torch.zeros(1, 1, 4000), 2, "euler", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_bfloat16_precision_is_close(small_io):
    torch.manual_seed(0)
    ref = Postfilter(nf=4, ch_mult=(1, 1))
    half = Postfilter(nf=4, ch_mult=(1, 1))
    half.load_state_dict(ref.state_dict())
    half.configure(precision="bfloat16")
    assert half.backbone.compute_dtype == torch.bfloat16 and half.sigma_y.dtype == torch.float64
    x, Y = small_io["x0"][..., :64], small_io["Y_feat"][..., :64]
    v32, v16 = ref.velocity(x, Y, 0.3), half.velocity(x, Y, 0.3)
    assert v16.dtype == torch.complex64
    rel = ((v16 - v32).abs().pow(2).mean() / v32.abs().pow(2).mean()).sqrt()
    assert rel < 0.05
    with pytest.raises(ValueError, match="float32"):
        half.save("unused")


@pytest.mark.gpu
def test_cuda_float32_matches_the_cpu():
    torch.manual_seed(0)
    model = Postfilter(nf=4, ch_mult=(1, 1))
    y = torch.randn(1, 1, 8000) * 0.1
    noise = torch.randn((1, 1, 768, 64), dtype=torch.complex64)
    ref = model.enhance(y, 2, "euler", noise=noise)
    model.to("cuda").configure()  # channels-last on CUDA, float32 with TF32 off
    out = model.enhance(y.cuda(), 2, "euler", noise=noise.cuda())
    assert out.device.type == "cuda" and (out.cpu() - ref).abs().max() < 1e-4


def test_compiled_backbone_is_not_recompiled_by_enhance_after_velocity(monkeypatch):
    """One compilation serves single passes and whole enhances alike (the GPU benchmark's first enhance
    used to compile the U-Net a second time: ``t`` was made outside inference mode)."""
    import functools

    import torch._dynamo

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))  # trace only
    torch._dynamo.reset()
    pf = Postfilter(nf=4).configure(compile=True)
    y = torch.randn(1, 1, 3000) * 0.1
    Y, _, _ = pf.features(y)
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            pf.velocity(torch.randn_like(Y), Y, 0.5)
            pf.enhance(y, 2, "euler", generator=torch.Generator().manual_seed(0))
    finally:
        torch._dynamo.reset()  # a failure must not leave compiled code behind for later tests


def test_flow_times_normfac_and_generators_that_gave_nan_or_bare_errors_are_refused(tiny):
    """velocity at t = nan returned NaN and t = 2 or -1 ran; normfac 0 gave NaN audio; a generator given as
    an int failed as an AttributeError."""
    y = torch.from_numpy(tone(0.5, 48000)[:, 0].copy())[None, None]
    Y = tiny.features(y)[0]
    for t in (float("nan"), 2.0, -1.0, torch.tensor([0.5, 1.5])):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            tiny.velocity(Y, Y, t)
    with pytest.raises(ValueError, match="t must be a number"):
        tiny.velocity(Y, Y, "0.5")
    with pytest.raises(ValueError, match="must be complex features"):
        tiny.velocity(Y.real, Y.real, 0.5)
    assert torch.isfinite(torch.view_as_real(tiny.velocity(Y, Y, 0.5))).all()
    with pytest.raises(ValueError, match="normfac must be positive"):
        tiny.enhance(y, 2, normfac=0.0)
    with pytest.raises(ValueError, match="no samples"):  # an IndexError from the peak's reduction
        tiny.features(y[..., :0])
    with pytest.raises(ValueError, match=r"generator must be a torch\.Generator"):
        tiny.enhance(y, 2, generator=5)
