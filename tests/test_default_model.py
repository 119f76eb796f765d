"""The model shipped inside the package: present, small, the default, and working offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import flowdec_cli
from flowdec_cli.cli import main
from flowdec_cli.models.catalogue import default_model_name

from .conftest import tone

ASSETS = Path(flowdec_cli.__file__).parent / "assets" / "models"


def test_default_model_is_bundled_and_small():
    name = default_model_name()
    folder = ASSETS / name
    assert (folder / "flowdec.json").is_file()
    card = json.loads((folder / "flowdec.json").read_text())
    assert card["name"] == name
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total < 25 * 1024 * 1024
    for part in ("ndac", "postfilter"):
        assert (folder / part / "model.safetensors").is_file()


def test_default_model_has_the_ndac75_ladder_and_its_rate_plan():
    """The codes keep NDAC-75's ladder; with the side channel on, the card's rate plan adds each rate's
    layout (docs/models.md, "A side channel by rate"), and a rate between two codebook counts' rates buys
    fewer codebooks with a denser side channel."""
    from flowdec_cli.pipeline import Codec

    codec = Codec.load(default_model_name(), "cpu")
    assert codec.ndac.sample_rate == 48000 and codec.ndac.hop_length == 640
    bare = Codec(codec.model, "cpu", envelope=False)
    assert [kbps for _, kbps in bare.bitrates()] == pytest.approx([0.75 * k for k in range(1, 11)])
    chosen = {kbps: (r.codebooks, r.layout.name)
              for kbps in (2.0, 3.0, 4.5, 6.0, 7.5) for r in [codec.choose_rate(kbps)]}
    assert chosen == {2.0: (1, "bands34-85ms"), 3.0: (2, "bands34-85ms"), 4.5: (3, "bands34-43ms"),
                      6.0: (3, "bands30-21ms"), 7.5: (4, "bands34-21ms")}
    assert codec.layout_for(1).name == "bands15" and codec.layout_for(2).name == "bands34-85ms"
    assert codec.layout_for(3).name == codec.layout_for(4).name == "bands34-43ms"
    assert codec.layout_for(5).name == "bands34-21ms"
    assert all(kbps >= 0.75 * k for k, kbps in codec.bitrates())
    assert codec.postfilter is not None


def test_roundtrip_with_default_model_offline(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, tone(1.0, 44100, 2), 44100)
    out = tmp_path / "out.flac"
    r = CliRunner().invoke(main, ["roundtrip", str(src), str(out), "-b", "6", "--nfe", "2", "--seed", "1", "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    y, sr = sf.read(out, always_2d=True)
    assert sr == 44100 and y.shape == (44100, 2) and np.isfinite(y).all() and np.abs(y).max() > 1e-3


def test_default_model_runs_its_postfilter_unless_told_not_to(tmp_path):
    """Its postfilter lifts speech and sounds (docs/models.md), so its card makes NFE 6 the default; --nfe 0
    still gives the codec alone, and a seed makes the default output repeatable."""
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.5, 48000, 1), 48000)
    runner = CliRunner()
    outs = []
    for name in ("a.wav", "b.wav"):
        r = runner.invoke(main, ["roundtrip", str(src), str(tmp_path / name), "-b", "6", "--seed", "0"],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert "NFE 6" in r.output
        outs.append(sf.read(tmp_path / name)[0])
    assert np.array_equal(outs[0], outs[1])
    r = runner.invoke(main, ["roundtrip", str(src), str(tmp_path / "c.wav"), "-b", "6", "--nfe", "0"],
                      catch_exceptions=False)
    assert r.exit_code == 0 and "NFE 0" in r.output
    assert not np.allclose(outs[0], sf.read(tmp_path / "c.wav")[0])


def test_temperature_option_reaches_the_postfilter(tmp_path):
    """At temperature 0 the postfilter's output no longer depends on the seed; out-of-range values are a
    usage error."""
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.5, 48000, 1), 48000)
    runner = CliRunner()
    outs = []
    for seed in ("0", "1"):
        out = tmp_path / f"t{seed}.wav"
        r = runner.invoke(main, ["roundtrip", str(src), str(out), "-b", "6", "--nfe", "2", "--seed", seed,
                                 "--temperature", "0", "-q"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        outs.append(sf.read(out)[0])
    assert np.array_equal(outs[0], outs[1])
    r = runner.invoke(main, ["roundtrip", str(src), str(tmp_path / "x.wav"), "--nfe", "2", "--temperature", "2.5"])
    assert r.exit_code == 2 and "temperature" in r.output.lower()
    r = runner.invoke(main, ["roundtrip", str(src), str(tmp_path / "x.wav"), "--temperature", "nan"])
    assert r.exit_code == 2 and "from 0 to 2" in r.output
    assert not (tmp_path / "x.wav").exists()


def test_temperature_without_the_postfilter_is_reported(tmp_path):
    """--temperature at NFE 0 changes nothing, and says so once (per run, not per file)."""
    src = tmp_path / "in.wav"
    sf.write(src, tone(0.5, 48000, 1), 48000)
    runner = CliRunner()
    r = runner.invoke(main, ["roundtrip", str(src), str(tmp_path / "a.wav"), "-b", "6", "--nfe", "0",
                             "--temperature", "0.3", "-q"], catch_exceptions=False)
    assert r.exit_code == 0 and r.output.count("--temperature has no effect at NFE 0") == 1, r.output
    (tmp_path / "codes").mkdir()
    r = runner.invoke(main, ["compress", str(src), str(tmp_path / "codes" / "a.fdc"), "-b", "6", "-q"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (tmp_path / "codes" / "b.fdc").write_bytes((tmp_path / "codes" / "a.fdc").read_bytes())
    r = runner.invoke(main, ["decompress", str(tmp_path / "codes"), str(tmp_path / "out"), "--nfe", "0",
                             "--temperature", "0.3", "-q"], catch_exceptions=False)
    assert r.exit_code == 0 and r.output.count("--temperature has no effect at NFE 0") == 1, r.output
    r = runner.invoke(main, ["decompress", str(tmp_path / "codes"), str(tmp_path / "out2"), "--nfe", "2",
                             "--temperature", "0.3", "-q"], catch_exceptions=False)
    assert r.exit_code == 0 and "no effect" not in r.output, r.output
