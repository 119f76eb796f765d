"""A model card's rate plan: which codebooks and which side-channel layout a requested rate gets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from flowdec_cli import envelope as env
from flowdec_cli.cli import main
from flowdec_cli.container import actual_bitrate, decode_fdc, encode_fdc
from flowdec_cli.models import ModelError
from flowdec_cli.pipeline import Codec, CodecError

from .conftest import tone

PLAN_LAYOUTS = ["bands15", "bands15", "bands15-85ms", "bands30-43ms", "bands30-21ms"] + ["bands30-21ms"] * 5
PLAN_KBPS = [0.9, 1.65, 2.75, 4.8, 7.25, 8.0, 8.75, 9.5, 10.25, 11.0]


def plan(layouts=PLAN_LAYOUTS, kbps=PLAN_KBPS) -> list[dict]:
    return [{"codebooks": i, "kbps": r, "envelope": lay} for i, (lay, r) in enumerate(zip(layouts, kbps), 1)]


def folder_with_card(tiny_codec_dir, tmp_path, **card):
    folder = tmp_path / "planned"
    shutil.copytree(tiny_codec_dir, folder)
    (folder / "flowdec.json").write_text(json.dumps({"name": "planned", "licence": "test-only", **card}))
    return folder


@pytest.fixture()
def planned_dir(tiny_codec_dir, tmp_path):
    return folder_with_card(tiny_codec_dir, tmp_path, envelope="bands15", rate_plan=plan())


def test_every_layout_round_trips_and_filters_exactly():
    x = (np.random.default_rng(1).standard_normal((2, 30000)) * 0.1).astype(np.float32)
    for layout in env.LAYOUTS.values():
        q = env.levels_of_signal(layout, x)
        assert q.shape == (2, layout.windows(30000), layout.n_bands)
        back = env.decode_levels(layout, env.encode_levels(layout, q), 2, q.shape[1])
        assert np.array_equal(back, q), layout.name
        y = x.copy()
        env.filter_bands(layout, y, y.shape[1], np.zeros(q.shape), block=5000)
        assert np.abs(y - x).max() < 1e-5, layout.name


def test_denser_layouts_follow_faster_level_changes():
    """A level that changes every 40 ms: the 21 ms layout tracks it, the 0.34 s one averages it away."""
    rng = np.random.default_rng(2)
    n = 48000 * 2
    loud = np.repeat(rng.choice([0.02, 0.3], size=n // 1920 + 1), 1920)[:n]
    ref = (rng.standard_normal(n) * loud)[None].astype(np.float32)
    flat = (rng.standard_normal(n) * 0.1)[None].astype(np.float32)
    errors = {}
    for name in ("bands15", "bands30-21ms"):
        layout = env.LAYOUTS[name]
        out = flat.copy()
        env.apply_envelope(layout, out, n, env.levels_of_signal(layout, ref))
        frames = 960  # 20 ms
        e_ref = np.log10((ref[0, :n // frames * frames].reshape(-1, frames) ** 2).mean(1) + 1e-9)
        e_out = np.log10((out[0, :n // frames * frames].reshape(-1, frames) ** 2).mean(1) + 1e-9)
        errors[name] = float(np.abs(e_ref - e_out).mean() * 10)
    assert errors["bands30-21ms"] < 0.5 * errors["bands15"]


def test_the_34_band_layout_splits_what_30_bands_hold_below_1khz():
    """Its 8 bands below 1 kHz (in 21, 43 and 85 ms windows) tell a 200 Hz tone from silence at 0-125 Hz, which
    bands30 lump together; above 1 kHz its bands are bands30's (a file's levels there mean the same in both)."""
    b30, b34 = env.LAYOUTS["bands30-21ms"], env.LAYOUTS["bands34-21ms"]
    assert b34.n_bands == 34 and b34.edges_hz[:9] == tuple(125.0 * i for i in range(9))
    assert b34.edges_hz[8:] == b30.edges_hz[4:]
    slow34, slow30 = env.LAYOUTS["bands34-43ms"], env.LAYOUTS["bands30-43ms"]  # the same bands, 43 ms windows
    assert slow34.edges_hz == b34.edges_hz and slow34.window_frames == slow30.window_frames == 2 * b34.window_frames
    slowest = env.LAYOUTS["bands34-85ms"]  # and 85 ms ones, with the 34 bands' +12 dB lift, not bands15-85ms's 6
    assert slowest.edges_hz == b34.edges_hz and slowest.window_frames == env.LAYOUTS["bands15-85ms"].window_frames
    assert slowest.max_boost_db == b34.max_boost_db == 12.0
    t = np.arange(48000) / 48000
    x = (0.3 * np.sin(2 * np.pi * 200 * t))[None].astype(np.float32)
    q30, q34 = env.levels_of_signal(b30, x)[0, 5:-5], env.levels_of_signal(b34, x)[0, 5:-5]
    assert (q34[:, 1] - q34[:, 0] >= 8).all()  # 3 dB steps: 24 dB or more between the two lowest bands
    assert (np.abs(q30[:, 0] - q34[:, 1]) <= 2).all()  # 0-250 Hz carries the tone, spread over 6 bins, not 3


def test_a_rate_picks_the_plans_codebooks_and_layout(planned_dir):
    codec = Codec.load(planned_dir, "cpu")
    assert codec.bitrates() == list(enumerate(PLAN_KBPS, 1))
    audio = tone(1.5, 48000)
    for kbps, k, layout in [(7.5, 5, "bands30-21ms"), (3.0, 3, "bands15-85ms"), (6.0, 4, "bands30-43ms"),
                            (1.0, 1, "bands15")]:
        header, codes = codec.compress_array(audio, 48000, bitrate_kbps=kbps)
        assert (header.n_codebooks, header.envelope_layout, codes.shape[1]) == (k, layout, k)
        assert header.envelope.shape[2] == env.LAYOUTS[layout].n_bands
        back, back_codes = decode_fdc(encode_fdc(header, codes))
        assert back.envelope_layout == layout and np.array_equal(back.envelope, header.envelope)
        out = codec.decompress_codes(back, back_codes, nfe=0)
        assert out.shape == audio.shape and np.isfinite(out).all()
    header, _ = codec.compress_array(audio, 48000, n_codebooks=4)
    assert header.envelope_layout == "bands30-43ms"
    with pytest.raises(CodecError, match="below the lowest rate"):
        codec.choose_codebooks(0.8)



def test_fit_falls_back_to_the_plans_cheaper_entries_with_their_own_side_channel(planned_dir, tmp_path):
    """Under a plan, --fit tries the entries below the chosen one, each with its own side channel measured
    on the input (the levels are those a direct request for that entry writes); a 1.2 s clip's header and
    levels put the 4.8 entry over 4.8 kbit/s. Without the input (the public primitive on codes alone)
    fewer codebooks keep the header's side channel."""
    codec = Codec.load(planned_dir, "cpu")
    src = tmp_path / "in.wav"
    sf.write(src, tone(1.2, 48000), 48000)
    h, codes = codec.compress_array(tone(1.2, 48000), 48000, bitrate_kbps=4.8)
    assert actual_bitrate(codec.coded_bytes(h, codes), 1.2, 1) > 4800
    fitted = codec.compress_file(src, tmp_path / "fit.fdc", bitrate_kbps=4.8, cap_kbps=4.8)
    direct = codec.compress_file(src, tmp_path / "direct.fdc", bitrate_kbps=2.75)
    assert (fitted.header.n_codebooks, fitted.header.envelope_layout) == (3, "bands15-85ms")
    assert np.array_equal(fitted.header.envelope, direct.header.envelope)
    assert (tmp_path / "fit.fdc").read_bytes() == (tmp_path / "direct.fdc").read_bytes()
    assert actual_bitrate(fitted.file_bytes, 1.2, 1) <= 4800
    kept, _ = codec.fit_on_disk(h, codes, 4.8)
    assert kept.envelope_layout == "bands30-43ms" and kept.n_codebooks < 4

def test_without_the_side_channel_the_codes_keep_their_own_rates(planned_dir):
    codec = Codec.load(planned_dir, "cpu", envelope=False)
    assert codec.bitrates()[-1] == (10, 7.5) and codec.choose_codebooks(7.5) == 10
    header, _ = codec.compress_array(tone(1.0, 48000), 48000, bitrate_kbps=7.5)
    assert header.envelope is None and header.n_codebooks == 10


@pytest.mark.parametrize("bad, why", [
    (plan()[:4], "no entry for 5, 6, 7, 8, 9, 10 codebooks"),
    (plan(kbps=[0.9, 1.65, 1.6] + PLAN_KBPS[3:]), "entry 3: kbps must be a number above the entry before it"),
    (plan(kbps=[0.5] + PLAN_KBPS[1:]), "at least the codes' own 0.75"),
    (plan(layouts=["bands15", "bands99"] + PLAN_LAYOUTS[2:]), "'bands99' is not known"),
    ([{"codebooks": 11, "kbps": 9, "envelope": "bands15"}] + plan(), 'entry 1 must be an object with "codebooks" '
                                                                    "from 1 to 10"),
    (plan()[:2] + [{"codebooks": True, "kbps": 2.0, "envelope": "bands15"}] + plan()[2:], "entry 3 must be"),
    (plan()[:3] + [{"codebooks": 2, "kbps": 2.7, "envelope": "bands30-21ms"}] + plan()[3:], "entry 4: kbps"),
    ([], "must be a list"),
])
def test_a_broken_plan_is_named(tiny_codec_dir, tmp_path, bad, why):
    folder = folder_with_card(tiny_codec_dir, tmp_path, envelope="bands15", rate_plan=bad)
    with pytest.raises(ModelError, match=f"model 'planned': its card's rate_plan.*{why}"):
        Codec.load(folder, "cpu")
    assert Codec.load(folder, "cpu", envelope=False).bitrates()[-1] == (10, 7.5)  # no side channel, no plan


def test_a_plan_that_is_no_list_breaks_the_card_itself(tiny_codec_dir, tmp_path):
    folder = folder_with_card(tiny_codec_dir, tmp_path, envelope="bands15", rate_plan="bands15")
    for envelope in (None, False):
        with pytest.raises(ModelError, match=r"flowdec\.json: rate_plan 'bands15' is not a list of entries"):
            Codec.load(folder, "cpu", envelope=envelope)


def test_compress_says_what_the_rate_bought(planned_dir, tmp_path):
    import soundfile as sf

    src = tmp_path / "in.wav"
    sf.write(src, tone(1.0, 48000), 48000)
    res = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "o.fdc"), "-m", str(planned_dir),
                                    "-b", "7.5"])
    assert res.exit_code == 0, res.output
    assert "5 codebooks = 3.75 kbit/s per channel + side channel bands30-21ms = 7.25 kbit/s nominal" in res.output


def test_records_count_the_nominal_rate_as_the_banner_does(planned_dir, tmp_path):
    """Under a rate plan ``kbps_nominal`` is the entry's rate (codes and side channel), not the codes' own."""
    src = tmp_path / "in.wav"
    sf.write(src, tone(1.0, 48000), 48000)
    fdc = tmp_path / "o.fdc"
    model = ["-m", str(planned_dir)]
    runs = {
        "compress": ["compress", str(src), str(fdc), "-b", "7.5", *model, "--json"],
        "decompress": ["decompress", str(fdc), str(tmp_path / "d.wav"), "--nfe", "0", *model, "--json"],
        "roundtrip": ["roundtrip", str(src), str(tmp_path / "r.wav"), "-b", "7.5", "--nfe", "0", *model, "--json"],
        "no side channel": ["compress", str(src), str(tmp_path / "n.fdc"), "-b", "7.5", "--no-envelope", *model,
                            "--json"],
    }
    wanted = {"no side channel": (7.5, 7.5)}  # without the side channel -b 7.5 buys 10 codebooks
    for what, args in runs.items():
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        rec = json.loads(res.stdout)
        assert (rec["kbps_nominal"], rec["kbps_codes"]) == wanted.get(what, (7.25, 3.75)), what
    res = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "t.fdc"), "-b", "7.5", *model])
    assert "(7.25 kbit/s nominal" in res.output


def test_info_shows_the_plans_rate_when_the_model_is_here(planned_dir, tmp_path):
    """info loads no model; it reads the plan from the card of a model that is built in or cached."""
    from flowdec_cli.models.catalogue import models_dir

    src = tmp_path / "in.wav"
    sf.write(src, tone(1.0, 48000), 48000)
    fdc = tmp_path / "o.fdc"
    assert CliRunner().invoke(main, ["compress", str(src), str(fdc), "-m", str(planned_dir), "-b", "7.5",
                                     "-q"]).exit_code == 0
    info = json.loads(CliRunner().invoke(main, ["info", str(fdc), "--json"]).stdout)
    assert "plan_bitrate_kbps" not in info and info["nominal_bitrate_kbps"] == 3.75  # the model is not here
    shutil.copytree(planned_dir, models_dir() / "planned")
    info = json.loads(CliRunner().invoke(main, ["info", str(fdc), "--json"]).stdout)
    assert info["plan_bitrate_kbps"] == 7.25 and info["nominal_bitrate_kbps"] == 3.75


SPLIT_PLAN = (plan()[:3]  # 1-3 codebooks as PLAN, then the denser layouts with fewer codebooks between them
              + [{"codebooks": 3, "kbps": 4.0, "envelope": "bands30-43ms"}, plan()[3],
                 {"codebooks": 3, "kbps": 5.8, "envelope": "bands30-21ms"},
                 {"codebooks": 4, "kbps": 6.5, "envelope": "bands30-21ms"}] + plan()[4:])


def test_a_count_may_have_several_rates(tiny_codec_dir, tmp_path):
    """Between two counts' rates, fewer codebooks with a denser side channel: -b picks the entry by rate, -n K
    the cheapest entry with K codebooks (what -n K gave when a count had one entry)."""
    codec = Codec.load(folder_with_card(tiny_codec_dir, tmp_path, envelope="bands15", rate_plan=SPLIT_PLAN), "cpu")
    assert codec.bitrates() == [(p["codebooks"], p["kbps"]) for p in SPLIT_PLAN]
    audio = tone(1.0, 48000)
    for kbps, k, layout, nominal in [(6.0, 3, "bands30-21ms", 5.8), (4.5, 3, "bands30-43ms", 4.0),
                                     (4.8, 4, "bands30-43ms", 4.8), (7.0, 4, "bands30-21ms", 6.5),
                                     (7.25, 5, "bands30-21ms", 7.25), (3.9, 3, "bands15-85ms", 2.75)]:
        rate = codec.choose_rate(kbps)
        assert (rate.codebooks, rate.layout.name, rate.kbps) == (k, layout, nominal), kbps
        header, codes = codec.compress_array(audio, 48000, bitrate_kbps=kbps)
        assert (header.n_codebooks, header.envelope_layout, codes.shape[1]) == (k, layout, k), kbps
    for k, layout, nominal in [(3, "bands15-85ms", 2.75), (4, "bands30-43ms", 4.8), (10, "bands30-21ms", 11.0)]:
        assert (codec.layout_for(k).name, codec.rate_of(k)) == (layout, nominal)
        header, _ = codec.compress_array(audio, 48000, n_codebooks=k)
        assert header.envelope_layout == layout
    assert codec.choose_rate().codebooks == 10


def test_the_cli_and_corpus_follow_the_entry_a_rate_gets(tiny_codec_dir, tmp_path):
    import soundfile as sf

    from flowdec_cli.container import inspect_fdc
    from flowdec_cli.corpus import encode_corpus

    folder = folder_with_card(tiny_codec_dir, tmp_path, envelope="bands15", rate_plan=SPLIT_PLAN)
    src = tmp_path / "in" / "a.wav"
    src.parent.mkdir()
    sf.write(src, tone(1.0, 48000), 48000)
    res = CliRunner().invoke(main, ["compress", str(src), str(tmp_path / "o.fdc"), "-m", str(folder), "-b", "6"])
    assert res.exit_code == 0, res.output
    assert "3 codebooks = 2.25 kbit/s per channel + side channel bands30-21ms = 5.8 kbit/s nominal" in res.output
    header = inspect_fdc(tmp_path / "o.fdc")
    assert (header.n_codebooks, header.envelope_layout) == (3, "bands30-21ms")
    res = CliRunner().invoke(main, ["roundtrip", str(src), str(tmp_path / "o.wav"), "-m", str(folder), "-b", "4.5",
                                    "--nfe", "0"])
    assert res.exit_code == 0 and "side channel bands30-43ms = 4 kbit/s nominal" in res.output, res.output
    encode_corpus(tmp_path / "in", tmp_path / "codes", to="fdc", model=str(folder), bitrate_kbps=6.0)
    header = inspect_fdc(tmp_path / "codes" / "a.fdc")
    assert (header.n_codebooks, header.envelope_layout) == (3, "bands30-21ms")
