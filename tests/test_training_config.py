"""Training configs (TOML/YAML, official defaults, overrides, errors) and the data pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from flowdec_cli.training.config import (
    ConfigError,
    NDACTrainConfig,
    OverrideError,
    PostfilterTrainConfig,
    config_from_dict,
    load_config,
)
from flowdec_cli.training.data import (
    EpochSampler,
    PairDataset,
    SegmentDataset,
    list_audio,
    load_excerpt,
    load_mono,
    read_pairs,
    split_items,
)

from .conftest import tone
from .test_training_helpers import write_clips, write_pairs_files

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_official_values():
    n = NDACTrainConfig()
    assert n.loss.mel_windows == [32, 64, 128, 256, 512, 1024, 2048] and n.loss.mel_bins[-1] == 320
    assert (n.loss.mel_weight, n.loss.waveform_weight, n.loss.commitment_weight, n.loss.codebook_weight) == \
        (15.0, 50.0, 0.25, 1.0)
    assert (n.loss.cqt_octaves, n.loss.cqt_fmin, n.loss.cqt_hop, n.loss.cqt_bins_per_octave) == \
        (9, 27.5, 256, [16, 32, 48, 64, 80])
    assert (n.optim.lr, n.optim.betas, n.optim.lr_gamma) == (1e-4, [0.8, 0.99], 0.999996)
    assert n.model.sample_rate == 48000 and n.model.n_codebooks == 10 and n.model.quantizer_dropout == 0.5
    p = PostfilterTrainConfig()
    assert (p.model.nf, p.model.ch_mult, p.model.n_fft, p.model.hop_length, p.model.alpha, p.model.beta) == \
        (64, [4, 4, 4, 2], 1534, 384, 0.3, 0.33)
    assert (p.optim.lr, p.optim.ema_decay, p.optim.weight_decay, p.optim.grad_clip) == (1e-4, 0.999, 0.0, None)
    assert (p.data.segment_seconds, p.data.batch_size, p.data.delimiter) == (2.0, 8, ",")
    assert (p.sigma.value, p.sigma.smoothing_bins) == (0.66, 3.0)
    assert (p.validation.nfe, p.validation.solver, p.validation.num_files) == ([6], "midpoint", 20)


def test_the_codec_section_is_the_codecs_own_config_and_needs_no_torch():
    """One declaration of the codec's settings: a key added to the codec is a key of [model], its bounds
    apply as the file is read, and reading a config imports no torch (a fresh interpreter proves it)."""
    import dataclasses
    import subprocess
    import sys

    from flowdec_cli.ndac_config import NDACConfig
    from flowdec_cli.training.config import NDACModelConfig

    assert issubclass(NDACModelConfig, NDACConfig)
    assert [f.name for f in dataclasses.fields(NDACModelConfig)] == [f.name for f in dataclasses.fields(NDACConfig)]
    with pytest.raises(ConfigError, match="model: config phase_lock is for a decoder without a gate"):
        config_from_dict("ndac", {"model": {"decoder_kind": "phase", "phase_lock": True}})
    code = ("import sys; from flowdec_cli.training.config import config_from_dict; "
            "config_from_dict('ndac', {'model': {'encoder_dim': 8}}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("name,kind", [("ndac-tiny.toml", "ndac"), ("ndac-75.toml", "ndac"),
                                       ("postfilter-tiny.toml", "postfilter"), ("flowdec-75m.toml", "postfilter")])
def test_example_configs_load(name, kind):
    cfg = load_config(CONFIGS / name, kind)
    assert Path(cfg.train.out_dir).is_absolute()
    assert all(Path(p).is_absolute() for p in cfg.data.train)


def test_toml_and_yaml_agree_and_overrides_apply(tmp_path):
    (tmp_path / "a.toml").write_text('[model]\nencoder_dim = 8\n[data]\ntrain = ["audio"]\nbatch_size = 4\n'
                                     '[train]\nout_dir = "run"\n')
    (tmp_path / "a.yaml").write_text("model:\n  encoder_dim: 8\ndata:\n  train: [audio]\n  batch_size: 4\n"
                                     "train:\n  out_dir: run\n")
    a = load_config(tmp_path / "a.toml", "ndac")
    b = load_config(tmp_path / "a.yaml", "ndac")
    assert a == b
    assert a.data.train == [str(tmp_path / "audio")] and a.train.out_dir == str(tmp_path / "run")
    c = load_config(tmp_path / "a.toml", "ndac", ["train.max_steps=12", "optim.grad_clip=none",
                                                  "model.encoder_rates=[2, 4, 5, 8]",
                                                  "model.decoder_rates=[8, 5, 4, 2]", "loss.mel_weight=1"])
    assert c.train.max_steps == 12 and c.optim.grad_clip is None and c.model.encoder_rates == [2, 4, 5, 8]
    assert c.loss.mel_weight == 1.0 and isinstance(c.loss.mel_weight, float)


def test_an_error_that_set_caused_names_set_not_the_file(tmp_path):
    """`--set model.encoder_dim=abc` was reported as an error of the config file, which has no such line."""
    (tmp_path / "a.toml").write_text('[model]\nencoder_dim = "x"\n[data]\ntrain = ["audio"]\n')
    for override, expected in [("model.encoder_dim=abc", "--set model.encoder_dim: expected an integer"),
                               ("model.foo=1", "--set [model]: unknown key foo"),
                               ("train.max_steps=[1]", "--set train.max_steps: expected an integer"),
                               ("data.batch_size=0", "--set data.batch_size must lie in [1, 65536]"),
                               ("foo.bar=1", "--set unknown section foo"),  # were blamed on the file
                               ("model.n_codebooks=0", "--set model: n_codebooks must be positive")]:
        with pytest.raises(OverrideError) as info:
            load_config(tmp_path / "a.toml", "ndac", ["model.encoder_dim=8", override])
        assert str(info.value).startswith(expected), str(info.value)
    for malformed in ("model.encoder_dim", "model=1", "train.max_steps.x=1"):
        with pytest.raises(OverrideError, match=f"--set '{re.escape(malformed)}': expected section.key=value"):
            load_config(tmp_path / "a.toml", "ndac", [malformed])
    for unparsed in ("data.train=[a.txt]", "data.train=[\"a.txt\"", "model.backbone='framewise"):
        with pytest.raises(OverrideError, match=f"--set '{re.escape(unparsed)}': not a TOML value"):
            load_config(tmp_path / "a.toml", "ndac", ["model.encoder_dim=8", unparsed])
    with pytest.raises(OverrideError, match=re.escape("--set 'data.train=': no value; give one, or none to unset")):
        load_config(tmp_path / "a.toml", "ndac", ["model.encoder_dim=8", "data.train="])
    bare = load_config(tmp_path / "a.toml", "ndac", ["model.encoder_dim=8", "data.train=b.txt"])
    assert bare.data.train == [str(tmp_path / "b.txt")]  # a bare word is still a string
    with pytest.raises(ConfigError, match=r"a.toml: model.encoder_dim: expected an integer") as info:
        load_config(tmp_path / "a.toml", "ndac", ["train.max_steps=3"])  # the file's own error, named so
    assert not isinstance(info.value, OverrideError)


@pytest.mark.parametrize("text,message", [
    ("[model]\nencoder_dimm = 8\n", "unknown key encoder_dimm"),
    ("[modle]\n", "unknown section modle"),
    ("[data]\nbatch_size = 'four'\n", "data.batch_size: expected an integer"),
    ("[model]\nencoder_rates = [2, 4]\ndecoder_rates = [8, 8]\n", "different products"),
    ("[train]\namp = 'fp8'\n", "train.amp"),
    ("[model\n", "invalid TOML"),
    # values that trained on anyway, or failed later as "unexpected ValueError" naming no file or key
    ("[data]\nsegment_seconds = 0\n", "data.segment_seconds must lie in"),
    ("[optim]\nlr = nan\n", "optim.lr: expected a finite number"),
    ("[model]\ncodebook_size = 1\n", "model: codebook_size must be at least 2"),
    ("[model]\nsample_rate = 0\n", "model: sample_rate must be positive"),
    ("[model]\nn_codebooks = 0\n", "model: n_codebooks must be positive"),
    # values that trained into all-NaN weights with exit 0, or failed as "unexpected OverflowError", ...
    ("[optim]\nlr_gamma = nan\n", "optim.lr_gamma: expected a finite number"),
    ("[optim]\nlr_gamma = -1.0\n", "optim.lr_gamma must lie in"),
    ("[optim]\ngrad_clip = 0.0\n", "optim.grad_clip must be positive"),
    ("[optim]\ngrad_clip = inf\n", "optim.grad_clip: expected a finite number, got inf; none unsets it"),
    ("[data]\nloudness_db = 1e300\n", "data.loudness_db must lie in"),
    ("[data]\ngain_db = [nan, nan]\n", r"data.gain_db\[0\]: expected a finite number"),
    ("[data]\ngain_db = [-200.0, 0.0]\n", "data.gain_db must be"),
    ("[data]\nsegment_seconds = 1e12\n", "data.segment_seconds must lie in"),
    ("[data]\nbatch_size = 1000000000000000000000\n", "data.batch_size must lie in"),
    ("[loss]\ncqt_octaves = 10\n", "loss.cqt_.*above Nyquist"),
    ("[loss]\ncqt_octaves = 100\n", "loss.cqt_.*1 to 16 octaves"),
    ("[loss]\ncqt_bins_per_octave = [0]\n", "loss.cqt_.*bins per octave must be 1 to 1024"),  # ZeroDivisionError
    ("[loss]\ncqt_hop = 100\n", "loss.cqt_.*must be divisible"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}: .*{message}"):
        load_config(path, "ndac")


@pytest.mark.parametrize("text,message", [
    ("[model]\nbeta = nan\n", "model.beta: expected a finite number"),
    ("[model]\nbeta = 0.0\n", "model.beta must be positive"),
    ("[model]\nalpha = 0.0\n", "model.alpha must lie in"),
    ("[sigma]\nvalue = inf\n", "sigma.value: expected a finite number"),
    ("[sigma]\nvalue = -0.5\n", "sigma.value and sigma.factor must be positive"),
    ("[data]\ndelimiter = ''\n", "data.delimiter must be one character"),
    ("[data]\ndelimiter = '\\n'\n", "data.delimiter must be one character"),
    ("[model]\npitch_top_hz = 8000\n", "model.pitch_top_hz needs the framewise backbone"),
    ("[model]\nbackbone = 'framewise'\npitch_top_hz = 30000\n", "model.pitch_top_hz must be 0"),
    ("[model]\nbackbone = 'framewise'\npitch_top_hz = 8000\n[data]\npitch_layout = 'f0-5ms'\n",
     "data.pitch_layout: pitch layout 'f0-5ms' is not known"),
])
def test_postfilter_config_errors_name_the_key(tmp_path, text, message):
    """A NaN beta or sigma trained a postfilter whose weights were all NaN, with exit 0 (the NaN examples
    were dropped, so the loss came out 0); alpha 0 divided by zero."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}: .*{message}"):
        load_config(path, "postfilter")


def test_a_postfilter_config_without_channel_multipliers_is_named(tmp_path):
    path = tmp_path / "pf.toml"
    path.write_text("[model]\nbackbone = 'ncsnpp'\nch_mult = []\n")
    with pytest.raises(ConfigError, match=r"model\.ch_mult must list at least one"):
        load_config(path, "postfilter")


def test_a_binary_file_as_config_is_one_clear_error(tmp_path):
    path = tmp_path / "audio.toml"
    path.write_bytes(b"RIFF\x80\xff\x00WAVE")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not a text file")):
        load_config(path, "ndac")


def test_perband_sigma_needs_a_file():
    with pytest.raises(ConfigError, match=re.escape("sigma.file")):
        config_from_dict("postfilter", {"sigma": {"mode": "perband"}})


# -- data --------------------------------------------------------------------------------------------------


def test_sources_split_and_lists(tmp_path):
    files = write_clips(tmp_path / "audio", 6, seconds=0.05)
    (tmp_path / "audio" / "notes.txt").write_text("not audio")
    lst = tmp_path / "list.txt"
    lst.write_text("# a comment\naudio/clip00.wav\n" + str(files[1]) + "\n")
    items = list_audio([tmp_path / "audio", lst])
    assert [Path(it.path).name for it in items] == [p.name for p in files]  # unique, sorted, audio only
    a = split_items(items, {"validation": 0.5})
    b = split_items(list(reversed(items)) + items[:0], {"validation": 0.5})
    assert sorted(i.path for i in a["validation"]) == sorted(i.path for i in b["validation"])
    assert len(a["train"]) + len(a["validation"]) == 6
    # a file's split depends only on its own relative path
    c = split_items(items[:3], {"validation": 0.5})
    assert {i.path for i in c["validation"]} == {i.path for i in a["validation"] if i in items[:3]}


def test_excerpts_match_whole_file_resampling(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, tone(0.5, 44100, 2), 44100, subtype="FLOAT")
    whole = load_mono(str(path), 48000)
    assert len(whole) == 24000
    for start in (0, 5000, 23000):
        ex = load_excerpt(str(path), 48000, start, 2000)
        ref = np.zeros(2000, np.float32)
        ref[:max(0, min(2000, 24000 - start))] = whole[start:start + 2000]
        assert np.max(np.abs(ex[:1000] - ref[:1000])) < 1e-3  # soxr edges differ only far below audibility


def test_segment_items_are_reproducible_per_epoch_and_index(tmp_path):
    files = write_clips(tmp_path / "a", 3, seconds=0.3)
    items = list_audio([tmp_path / "a"])
    ds = SegmentDataset(items, 48000, 4800, seed=1, gain_db=(-6, 6), random_polarity=True)
    assert torch.equal(ds[(0, 1)], ds[(0, 1)])
    assert not torch.equal(ds[(0, 1)], ds[(1, 1)])
    assert ds[(0, 2)].shape == (1, 4800) and float(ds[(0, 2)].abs().max()) <= 1.0
    s = EpochSampler(ds, num_replicas=1, rank=0, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip=1)
    assert list(s) == full[1:] and all(e == 2 for e, _ in full)
    halves = []
    for r in range(2):  # two processes see disjoint halves of the same permutation
        s2 = EpochSampler(ds, num_replicas=2, rank=r, seed=3, drop_last=False)
        s2.set_epoch(2)
        halves.append([i for _, i in s2])
    assert sorted(halves[0] + halves[1])[:3] == sorted(i for _, i in full)
    assert len(files) == 3


def test_pairs_share_the_crop(tmp_path):
    lst, pairs = write_pairs_files(tmp_path, 2, seconds=0.3, noise=0.0)
    got = read_pairs([lst])
    assert got == [(str(a), str(b)) for a, b in pairs]
    ds = PairDataset(got, 48000, 4800, seed=0, train=True)
    x, y, seed = ds[(0, 0)]
    assert x.shape == y.shape == (1, 4800) and seed.dtype == torch.int64
    assert torch.allclose(x, y, atol=1e-6)  # noise-free coded copy: the same offset in both
    val = PairDataset(got, 48000, 48000, train=False)  # longer than the files: zero-padded on both sides
    x, y, _ = val[0]
    assert x.shape == (1, 48000) and float(x[0, :100].abs().max()) == 0.0 and float(x[0, -100:].abs().max()) == 0.0
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{pairs[0][1]},{pairs[0][0]}\n")  # coded shorter than clean
    with pytest.raises(Exception, match="shorter"):
        PairDataset(read_pairs([bad]), 48000, 4800)[0]


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_a_config_nested_too_deeply_is_named(tmp_path, suffix):
    pytest.importorskip("yaml") if suffix == ".yaml" else None
    path = tmp_path / f"deep{suffix}"
    path.write_text(("a = " if suffix == ".toml" else "a: ") + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=f"deep{re.escape(suffix)}: invalid .* \\(nested too deeply\\)"):
        load_config(path, "ndac")


def test_a_set_value_nested_too_deeply_is_named(tmp_path):
    (tmp_path / "a.toml").write_text("[model]\nencoder_dim = 8\n")
    with pytest.raises(OverrideError, match="nested too deeply"):
        load_config(tmp_path / "a.toml", "ndac", ["data.train=" + "[" * 5000 + "]" * 5000])


def test_the_postfilter_configs_defaults_are_the_official_features():
    """The training config is torch-free, so it cannot import :mod:`flowdec_cli.features`; its defaults
    restate the official STFT settings, and this keeps the two from drifting apart."""
    from flowdec_cli import features
    from flowdec_cli.training.config import PostfilterModelConfig

    m = PostfilterModelConfig()
    assert (m.n_fft, m.hop_length, m.alpha, m.beta) == (features.N_FFT, features.HOP_LENGTH, features.ALPHA,
                                                         features.BETA)
