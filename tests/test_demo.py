"""`make demo`: the default model at its own NFE, bitrate on disk, time, a quality figure beside Opus."""

from __future__ import annotations

import pytest

from flowdec_cli.demo import run_demo
from flowdec_cli.evaluation.codec_eval import opus_available


def test_demo_runs_the_model_at_its_own_setting(tmp_path, tiny_codec_dir, monkeypatch):
    monkeypatch.setenv("FLOWDEC_MODEL", str(tiny_codec_dir))
    lines: list[str] = []
    res = run_demo(tmp_path, seconds=1.0, device="cpu", say=lines.append)
    assert res["model"] == "tiny-75" and res["nfe"] == 0  # a codec alone: its own default, nothing forced
    assert res["kbps_nominal"] == 7.5 and 7.5 < res["kbps_on_disk"] < 9.0
    text = "\n".join(lines)
    assert "kbit/s on disk" in text and "mel distance" in text and "NFE 0" in text
    assert "SI-SDR" not in text
    if opus_available():
        assert "opus" in res and res["opus"]["kbps_on_disk"] > 0
    else:
        assert "opusenc/opusdec not found" in text


@pytest.mark.slow
def test_demo_with_the_built_in_model_says_what_it_is_for(tmp_path):
    from flowdec_cli.models.catalogue import builtin_model_name
    from flowdec_cli.pipeline import Codec

    lines: list[str] = []
    res = run_demo(tmp_path, seconds=1.0, device="cpu", say=lines.append)
    assert res["nfe"] == Codec.load(builtin_model_name(), "cpu", with_postfilter=False).model.default_nfe
    assert "fetch-official" in lines[-1] and "built-in" in lines[-1]
