"""Function-preserving widening of a trained NDAC's encoder and decoder (``flowdec train widen-ndac``) and of a
frame-wise postfilter's residual stream (``flowdec train widen-postfilter``)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from flowdec_cli.cli import main
from flowdec_cli.models import save_ndac
from flowdec_cli.ndac import NDAC, NDACConfig
from flowdec_cli.postfilter import Postfilter
from flowdec_cli.training.common import TrainingError
from flowdec_cli.training.widen import widen_ndac, widen_ndac_folder, widen_postfilter, widen_postfilter_folder

from .test_training_helpers import (  # noqa: F401  (fast_cpu: a fixture)
    TINY_NDAC_MODEL,
    fast_cpu,
    postfilter_dict,
    write_pairs_files,
)


def _trained_looking_ndac(seed: int = 0) -> NDAC:
    """A tiny NDAC whose weights are not at their initial values (random weight-norm gains, Snake alphas
    and biases), so the widening is checked on every kind of parameter."""
    torch.manual_seed(seed)
    model = NDAC(NDACConfig(**TINY_NDAC_MODEL))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("weight_g", "alpha")):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
    return model


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("encoder_factor", "decoder_factor"), [(1, 2), (1, 3), (2, 1), (3, 1), (2, 2)])
def test_widened_codec_computes_the_same_latent_codes_and_waveform(encoder_factor, decoder_factor):
    model = _trained_looking_ndac()
    wide = widen_ndac(model, encoder_factor=encoder_factor, decoder_factor=decoder_factor, noise=0.0)
    assert wide.config.encoder_dim == encoder_factor * model.config.encoder_dim
    assert wide.config.decoder_dim == decoder_factor * model.config.decoder_dim
    for half, factor in (("encoder", encoder_factor), ("decoder", decoder_factor)):
        old, new = getattr(model, half), getattr(wide, half)
        if factor > 1:
            assert _parameter_count(new) > 1.5 * _parameter_count(old)
        else:  # the half that is not widened is copied exactly
            assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values(),
                                                         strict=True))
    audio = torch.randn(1, 1, 3200) * 0.3
    with torch.no_grad():
        torch.testing.assert_close(wide.encoder(audio), model.encoder(audio), rtol=0, atol=1e-5)
    codes = model.encode(audio)
    assert torch.equal(wide.encode(audio), codes)
    narrow_out, wide_out = model.decode(codes), wide.decode(codes)
    assert narrow_out.shape == wide_out.shape
    torch.testing.assert_close(wide_out, narrow_out, rtol=0, atol=1e-5 if decoder_factor > 1 else 0)


def test_noise_breaks_the_symmetry_of_the_copies_but_keeps_the_output_close():
    model = _trained_looking_ndac()
    wide = widen_ndac(model, decoder_factor=2, noise=1e-3, seed=1)
    conv = wide.decoder.model[0]
    half = conv.weight_v.shape[0] // 2
    assert not torch.equal(conv.weight_v[:half], conv.weight_v[half:])
    codes = model.encode(torch.randn(1, 1, 3200) * 0.3)
    a, b = model.decode(codes), wide.decode(codes)
    assert 0 < float((a - b).abs().max()) < 0.05 * float(a.abs().max()) + 1e-3


def test_widening_refuses_bad_factors_and_folded_models():
    model = _trained_looking_ndac()
    for factor in (0, -1, 1.5, True):
        with pytest.raises(TrainingError, match="decoder widening factor"):
            widen_ndac(model, decoder_factor=factor)  # type: ignore[arg-type]
        with pytest.raises(TrainingError, match="encoder widening factor"):
            widen_ndac(model, encoder_factor=factor)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="nothing to widen"):
        widen_ndac(model)
    for noise in (float("nan"), -1e-3, 2.0):  # NaN noise wrote NaN weights that decoded to noise, silently
        with pytest.raises(TrainingError, match=r"noise .* is not in"):
            widen_ndac(model, decoder_factor=2, noise=noise)
    with pytest.raises(TrainingError, match=r"and 100000 \(decoder\): config decoder_dim"):
        widen_ndac(model, decoder_factor=100_000)  # beyond the config's bounds: one clear error
    with pytest.raises(TrainingError, match="folded"):
        widen_ndac(_trained_looking_ndac().fold_weight_norm(), decoder_factor=2)


def test_widen_ndac_command_writes_a_folder_training_can_start_from(tmp_path):
    model = _trained_looking_ndac()
    src = tmp_path / "narrow"
    save_ndac(model, src / "ndac")
    (src / "flowdec.json").write_text(json.dumps({"name": "narrow"}))
    out = tmp_path / "wide"
    result = CliRunner().invoke(main, ["train", "widen-ndac", str(src), str(out), "--decoder-factor", "2",
                                       "--noise", "0"])
    assert result.exit_code == 0, result.output
    assert f"decoder_dim {2 * TINY_NDAC_MODEL['decoder_dim']}" in result.output
    config = json.loads((out / "ndac" / "config.json").read_text())
    assert config["decoder_dim"] == 2 * TINY_NDAC_MODEL["decoder_dim"]
    # no clobbering without --force, and a one-line error
    again = CliRunner().invoke(main, ["train", "widen-ndac", str(src), str(out), "--decoder-factor", "2"])
    assert again.exit_code != 0 and "Traceback" not in again.output and f"{out}: exists; use -f" in again.output
    with pytest.raises(TrainingError, match="is the codec being widened"):
        widen_ndac_folder(out, out, decoder_factor=2, overwrite=True)  # even --force: never over its source
    assert widen_ndac_folder(src, out, decoder_factor=2, noise=0.0, overwrite=True) == out
    # the encoder too, and a one-line error when there is nothing to widen
    enc = CliRunner().invoke(main, ["train", "widen-ndac", str(src), str(tmp_path / "wide-enc"),
                                    "--encoder-factor", "2"])
    assert enc.exit_code == 0, enc.output
    assert f"model.encoder_dim={2 * TINY_NDAC_MODEL['encoder_dim']}" in enc.output
    assert json.loads((tmp_path / "wide-enc" / "ndac" / "config.json").read_text())["encoder_dim"] == \
        2 * TINY_NDAC_MODEL["encoder_dim"]
    none = CliRunner().invoke(main, ["train", "widen-ndac", str(src), str(tmp_path / "wide-none")])
    assert none.exit_code != 0 and "Traceback" not in none.output and "nothing to widen" in none.output
    assert not (tmp_path / "wide-none").exists()


def test_training_continues_from_a_widened_codec(tmp_path):
    from flowdec_cli.training.config import config_from_dict
    from flowdec_cli.training.ndac_trainer import NDACTrainer

    from .test_training_helpers import ndac_dict, write_clips

    clips = tmp_path / "clips"
    write_clips(clips, 2, seconds=0.3)
    model = _trained_looking_ndac()
    save_ndac(model, tmp_path / "narrow" / "ndac")
    widen_ndac_folder(tmp_path / "narrow", tmp_path / "wide", decoder_factor=2)
    wide_dim = 2 * TINY_NDAC_MODEL["decoder_dim"]
    cfg = config_from_dict("ndac", ndac_dict([str(clips)], tmp_path / "run", model=dict(decoder_dim=wide_dim),
                                             train=dict(max_steps=2, init_from=str(tmp_path / "wide"))))
    trainer = NDACTrainer(cfg, device="cpu", quiet=True)
    trainer.run()
    assert trainer.step == 2 and trainer.model.config.decoder_dim == wide_dim
    # the encoder started from the narrow codec's weights, not from a fresh initialisation
    torch.testing.assert_close(trainer.model.encoder.block[0].weight_v, model.encoder.block[0].weight_v,
                               rtol=0, atol=0.05)


TINY_FRAMEWISE = dict(dim=8, intermediate_dim=16, num_blocks=2, kernel_size=3, fourier_size=4)


def _trained_looking_postfilter(seed: int = 0, **framewise: int) -> Postfilter:
    """A tiny frame-wise postfilter with every parameter away from its initial value (the zero-initialised
    head and time modulation included), so the widening is checked on every kind of parameter."""
    torch.manual_seed(seed)
    pf = Postfilter(backbone="framewise", framewise={**TINY_FRAMEWISE, **framewise}, pad_multiple=8,
                    sigma_y=torch.rand(768, 1, dtype=torch.float64) + 0.2)
    with torch.no_grad():
        for p in pf.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return pf


@pytest.mark.parametrize(("factor", "spread", "context"), [(2, 0.25, 0), (3, 0.0, 0), (2, 0.5, 2)])
def test_widened_postfilter_computes_the_same_velocity(factor, spread, context):
    pf = _trained_looking_postfilter(context_dilation=context)
    wide = widen_postfilter(pf, dim_factor=factor, spread=spread, seed=1)
    dim = TINY_FRAMEWISE["dim"]
    assert wide.backbone.dim == factor * dim and wide.config["framewise"]["dim"] == factor * dim
    assert torch.equal(wide.sigma_y, pf.sigma_y) and wide.temperature == pf.temperature
    torch.manual_seed(2)
    Y = torch.randn(2, 1, 768, 24, dtype=torch.complex64)
    x = Y + 0.3 * torch.randn(2, 1, 768, 24, dtype=torch.complex64)
    for t in (0.1, 0.7):
        torch.testing.assert_close(wide.velocity(x, Y, t), pf.velocity(x, Y, t), rtol=1e-4, atol=1e-5)
    # the readers' shares sum to the old weight; unequal shares (spread > 0) make the copies differ
    old, new = pf.backbone.head.weight, wide.backbone.head.weight
    torch.testing.assert_close(sum(new[:, i * dim:(i + 1) * dim] for i in range(factor)), old)
    assert torch.equal(new[:, :dim], new[:, dim:2 * dim]) == (spread == 0)


def test_widening_a_postfilter_refuses_what_it_cannot_widen():
    pf = _trained_looking_postfilter()
    for factor in (0, 1.5, "2"):
        with pytest.raises(TrainingError, match="dim widening factor"):
            widen_postfilter(pf, dim_factor=factor)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="nothing to widen"):
        widen_postfilter(pf, dim_factor=1)
    for spread in (float("nan"), -0.1, 1.0):
        with pytest.raises(TrainingError, match="spread"):
            widen_postfilter(pf, dim_factor=2, spread=spread)
    with pytest.raises(TrainingError, match="cannot widen by 1000"):
        widen_postfilter(pf, dim_factor=1000)  # beyond the config's bounds: one clear error
    with pytest.raises(TrainingError, match="only a frame-wise postfilter"):
        widen_postfilter(Postfilter(nf=4, ch_mult=(1, 1), pad_multiple=8), dim_factor=2)


def test_widen_postfilter_command_writes_a_folder_training_can_start_from(tmp_path):
    pf = _trained_looking_postfilter()
    src = tmp_path / "narrow"
    pf.save(src / "postfilter")
    out = tmp_path / "wide"
    result = CliRunner().invoke(main, ["train", "widen-postfilter", str(src), str(out), "--dim-factor", "2"])
    assert result.exit_code == 0, result.output
    assert f"model.dim={2 * TINY_FRAMEWISE['dim']}" in result.output
    wide = Postfilter.load(out / "postfilter")
    Y = torch.randn(1, 1, 768, 16, dtype=torch.complex64)
    torch.testing.assert_close(wide.velocity(Y * 0.5, Y, 0.3), pf.velocity(Y * 0.5, Y, 0.3), rtol=1e-4, atol=1e-5)
    again = CliRunner().invoke(main, ["train", "widen-postfilter", str(src), str(out), "--dim-factor", "2"])
    assert again.exit_code != 0 and "Traceback" not in again.output and f"{out}: exists; use -f" in again.output
    with pytest.raises(TrainingError, match="is the postfilter being widened"):
        widen_postfilter_folder(out, out, dim_factor=2, overwrite=True)
    unet = tmp_path / "unet"
    Postfilter(nf=4, ch_mult=(1, 1), pad_multiple=8).save(unet / "postfilter")
    r = CliRunner().invoke(main, ["train", "widen-postfilter", str(unet), str(tmp_path / "w0"), "--dim-factor", "2"])
    assert r.exit_code == 1 and f"{unet / 'postfilter'}: holds the released U-Net postfilter" in r.output  # named
    bad = CliRunner().invoke(main, ["train", "widen-postfilter", str(src), str(tmp_path / "w1"), "--dim-factor", "1"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output and not (tmp_path / "w1").exists()
    nan = CliRunner().invoke(main, ["train", "widen-postfilter", str(src), str(tmp_path / "w2"), "--dim-factor", "2",
                                    "--spread", "nan"])
    assert nan.exit_code != 0 and "Traceback" not in nan.output and not (tmp_path / "w2").exists()


@pytest.mark.usefixtures("fast_cpu")
def test_training_continues_from_a_widened_postfilter(tmp_path):
    from flowdec_cli.training.config import config_from_dict
    from flowdec_cli.training.postfilter_trainer import PostfilterTrainer

    pairs, _ = write_pairs_files(tmp_path / "pairs", 3)
    pf = _trained_looking_postfilter()
    pf.save(tmp_path / "narrow" / "postfilter")
    widen_postfilter_folder(tmp_path / "narrow", tmp_path / "wide", dim_factor=2)
    model = dict(backbone="framewise", **{**TINY_FRAMEWISE, "dim": 2 * TINY_FRAMEWISE["dim"]})
    cfg = config_from_dict("postfilter", postfilter_dict([str(pairs)], tmp_path / "run", model=model,
                                                         train=dict(max_steps=2, init_from=str(tmp_path / "wide"))))
    trainer = PostfilterTrainer(cfg, device="cpu", quiet=True)
    trainer.build()
    trainer.init_weights(tmp_path / "wide")
    Y = torch.randn(1, 1, 768, 16, dtype=torch.complex64)
    torch.testing.assert_close(trainer.pf.velocity(Y * 0.5, Y, 0.3), pf.velocity(Y * 0.5, Y, 0.3),
                               rtol=1e-4, atol=1e-5)
    trainer.run()
    assert trainer.step == 2
