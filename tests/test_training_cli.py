"""``flowdec train``: the whole recipe from the command line, ending in a model that round-trips."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from flowdec_cli.cli import main
from flowdec_cli.container import inspect_fdc
from flowdec_cli.training.cli import train_group

from .conftest import tone
from .test_faults import spawn
from .test_training_helpers import fast_cpu, write_clips  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_cpu")

if "train" not in main.commands:  # the package attaches it; make sure the tests see it either way
    main.add_command(train_group, "train")

NDAC_TOML = """
[model]
encoder_dim = 4
encoder_rates = [2, 4, 5, 8]
latent_dim = 8
decoder_dim = 16
decoder_rates = [8, 5, 4, 2]
n_codebooks = 3
codebook_size = 32
codebook_dim = 4

[data]
train = ["clips"]
validation_fraction = 0.0
segment_seconds = 0.1
batch_size = 2
num_workers = 0

[loss]
cqt_bins_per_octave = [8]

[train]
max_steps = 100
log_every = 1
val_every = 0
checkpoint_every = 0
out_dir = "runs/ndac"
tensorboard = false
"""

PF_YAML = """
model: {nf: 4, ch_mult: [1, 1], pad_multiple: 8}
sigma: {mode: perband, file: pairs/sigma.json}
data:
  train: [pairs/train.txt]
  validation: [pairs/validation.txt]
  segment_seconds: 0.08
  batch_size: 2
  num_workers: 0
train: {max_steps: 2, log_every: 1, val_every: 2, checkpoint_every: 0, out_dir: runs/pf, tensorboard: false}
validation: {num_files: 1, nfe: [2], max_seconds: 0.1}
"""


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output and lines[0].startswith("flowdec: error: ")
    return lines[0]


def test_train_export_and_roundtrip_from_the_command_line(tmp_path):
    write_clips(tmp_path / "clips", 4, seconds=0.3)
    (tmp_path / "ndac.toml").write_text(NDAC_TOML)
    (tmp_path / "pf.yaml").write_text(PF_YAML)

    r = _run("train", "ndac", tmp_path / "ndac.toml", "--device", "cpu", "--max-steps", "2", "-q")
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "ndac"
    assert (run / "checkpoints" / "step-00000002" / "trainer.json").is_file()
    r = _run("train", "ndac", tmp_path / "ndac.toml", "--device", "cpu", "--max-steps", "3", "--resume", "-q")
    assert r.exit_code == 0, r.output
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000003"

    r = _run("train", "prepare-pairs", tmp_path / "clips", "--ndac", run, "-o", tmp_path / "pairs", "-n", "3,1",
             "--validation-fraction", "0.25", "--test-fraction", "0.25", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "pairs" / "prepare.json").read_text())
    assert summary["n_codebooks"] == [3, 1] and sum(summary["pairs"].values()) == 8
    # resuming with the same codec keeps the files; another codec's weights must not pair with them
    pair_args = ["-o", tmp_path / "pairs", "-n", "3,1", "--validation-fraction", "0.25", "--test-fraction", "0.25",
                 "--device", "cpu", "-q"]
    r = _run("train", "prepare-pairs", tmp_path / "clips", "--ndac", run, *pair_args)
    assert r.exit_code == 0 and json.loads((tmp_path / "pairs" / "prepare.json").read_text())["written"] == 0
    older = run / "checkpoints" / "step-00000002"
    line = _one_error_line(_run("train", "prepare-pairs", tmp_path / "clips", "--ndac", older, *pair_args))
    assert "another NDAC" in line and summary["ndac_hash"] in line and "--force" in line
    r = _run("train", "prepare-pairs", tmp_path / "clips", "--ndac", older, *pair_args, "--force")
    assert r.exit_code == 0 and json.loads((tmp_path / "pairs" / "prepare.json").read_text())["written"] == 8
    # which codec codes into a folder is recorded before its first file: a run stopped partway and resumed
    # with another codec kept the first one's files under the second one's hash
    partial = tmp_path / "pairs-partial"
    import flowdec_cli.training.prepare as prepare_module

    real_write = prepare_module.write_audio

    def stop_after_one(*args, **kwargs):
        real_write(*args, **kwargs)
        raise KeyboardInterrupt

    prepare_module.write_audio = stop_after_one
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare_module.prepare_pairs(older, [tmp_path / "clips"], partial, n_codebooks=[1])
    finally:
        prepare_module.write_audio = real_write
    recorded = json.loads((partial / "prepare.json").read_text())
    assert recorded["complete"] is False and recorded["ndac_hash"] != summary["ndac_hash"]
    line = _one_error_line(_run("train", "prepare-pairs", tmp_path / "clips", "--ndac", run, "-o", partial,
                                "-n", "1", "--device", "cpu", "-q"))
    assert "another NDAC" in line
    lines = (tmp_path / "pairs" / "train.txt").read_text().splitlines()
    clean, coded = lines[0].split(",")
    assert sf.info(coded).samplerate == 48000 and sf.info(coded).channels == 1
    assert sf.info(coded).frames == round(sf.info(clean).frames * 48000 / sf.info(clean).samplerate)
    if not (tmp_path / "pairs" / "validation.txt").read_text():  # the hash split may leave it empty
        (tmp_path / "pairs" / "validation.txt").write_text(lines[0] + "\n")

    r = _run("train", "estimate-sigma", tmp_path / "pf.yaml", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    est = json.loads((tmp_path / "pairs" / "sigma.json").read_text())
    assert len(est["sigma_y_perband"]) == 768 and est["sigma_y"] > 0 and est["beta"] > 0
    assert est["pairs_coded_by"] == [{"ndac_hash": json.loads((tmp_path / "pairs" / "prepare.json").read_text())
                                      ["ndac_hash"], "envelope": "", "n_codebooks": [1, 3]}]  # for the trainer
    assert (tmp_path / "pairs" / "sigma_perband.npy").is_file()
    r = _run("train", "estimate-sigma", tmp_path / "pf.yaml", "-q")
    assert "exists; use -f/--force" in _one_error_line(r)
    npy = (tmp_path / "pairs" / "sigma_perband.npy").read_bytes()
    r = _run("train", "estimate-sigma", "--pairs", tmp_path / "pairs" / "train.txt", "-o",
             tmp_path / "pairs" / "sigma.txt", "-q")  # a new JSON, but its curve's .npy name is taken
    assert "sigma_perband.npy: exists; use -f/--force" in _one_error_line(r)
    assert (tmp_path / "pairs" / "sigma_perband.npy").read_bytes() == npy
    assert not (tmp_path / "pairs" / "sigma.txt").exists()

    r = _run("train", "postfilter", tmp_path / "pf.yaml", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output  # its sigma was estimated from these very pairs
    record = json.loads((tmp_path / "pairs" / "prepare.json").read_text())
    (tmp_path / "pairs" / "prepare.json").write_text(json.dumps({**record, "ndac_hash": "0" * 16}))
    stale = _run("train", "postfilter", tmp_path / "pf.yaml", "--device", "cpu", "--max-steps", "1", "-q",
                 "--out", tmp_path / "runs" / "pf-stale")  # as if re-coded by other weights since the estimate
    assert stale.exit_code == 0 and "warning:" in stale.output
    assert "run 'flowdec train estimate-sigma' again" in stale.output
    (tmp_path / "pairs" / "prepare.json").write_text(json.dumps(record))
    assert "si_sdr_nfe2" in r.output  # the validation line and the summary
    pf_run = tmp_path / "runs" / "pf"
    cfg = json.loads((pf_run / "config.json").read_text())
    assert cfg["kind"] == "postfilter" and cfg["sigma"]["mode"] == "perband"
    assert (pf_run / "postfilter" / "model.safetensors").is_file()

    model = tmp_path / "my-model"
    r = _run("train", "export", model, "--ndac", run, "--postfilter", pf_run, "--name", "tiny-trained",
             "--trained-codebooks", "3,1")
    assert r.exit_code == 0, r.output
    card = json.loads((model / "flowdec.json").read_text())
    assert card["name"] == "tiny-trained" and card["n_codebooks"] == 3 and card["frame_rate"] == 150.0
    # the pairs were re-coded by the older checkpoint above: said, as is a codebook list they do not have
    assert "trained on pairs coded by other codec weights" in r.output and "differs" not in r.output
    r = _run("train", "export", tmp_path / "same", "--ndac", older, "--postfilter", pf_run, "--trained-codebooks", "2")
    assert r.exit_code == 0 and "other codec weights" not in r.output
    assert "--trained-codebooks 2 differs from the codebook counts its pairs were coded at (1,3)" in r.output
    assert (model / "ndac" / "config.json").is_file() and (model / "postfilter" / "config.json").is_file()
    r = _run("train", "export", model, "--ndac", run)
    assert "not empty" in _one_error_line(r)

    # entropy tables learned for this codec follow it into a re-export with a new postfilter, and only then
    from flowdec_cli.entropy import load_tables
    from flowdec_cli.training.entropy_tables import build_tables_for_model

    _, tables, _ = build_tables_for_model(model, [tmp_path / "clips"])
    r = _run("train", "export", model, "--ndac", model, "--postfilter", pf_run, "--name", "tiny-trained", "-f")
    assert r.exit_code == 0, r.output
    assert load_tables(model / "entropy.safetensors").id == tables.id
    r = _run("train", "export", tmp_path / "other", "--ndac", model, "--postfilter", pf_run)
    assert r.exit_code == 0 and (tmp_path / "other" / "entropy.safetensors").is_file()
    r = _run("train", "export", tmp_path / "raw", "--ndac", run)
    assert r.exit_code == 0 and not (tmp_path / "raw" / "entropy.safetensors").exists()
    import dataclasses

    from flowdec_cli.entropy import save_tables

    save_tables(dataclasses.replace(tables, ndac_hash="0" * 16), model)  # tables of some other codec's weights
    r = _run("train", "export", tmp_path / "stale", "--ndac", model)
    assert r.exit_code == 0 and not (tmp_path / "stale" / "entropy.safetensors").exists()
    assert "warning: not copying" in r.output and "learned for other codec weights" in r.output
    (model / "entropy.safetensors").write_bytes(b"not tables")  # unreadable tables are named, not dropped unseen
    r = _run("train", "export", tmp_path / "broken", "--ndac", model)
    assert r.exit_code == 0 and not (tmp_path / "broken" / "entropy.safetensors").exists()
    assert "warning: not copying the entropy tables" in r.output and "unreadable entropy tables" in r.output
    save_tables(tables, model)

    wav = tmp_path / "in.wav"
    sf.write(wav, tone(0.4, 44100, 2), 44100)
    out = tmp_path / "out.wav"
    r = _run("roundtrip", wav, out, "--model", model, "--nfe", "2", "--device", "cpu", "-q", "--seed", "1")
    assert r.exit_code == 0, r.output
    y, sr = sf.read(out, always_2d=True)
    assert sr == 44100 and y.shape == (sf.info(str(wav)).frames, 2) and np.isfinite(y).all()

    # NFE when none is given: the card's default_nfe, else 6 (the paper's), and 0 for a codec alone
    from flowdec_cli.models import load_model

    assert "default_nfe" not in card and load_model(model).default_nfe == 6
    r = _run("train", "export", tmp_path / "nfe2", "--ndac", run, "--postfilter", pf_run, "--default-nfe", "2")
    assert r.exit_code == 0 and json.loads((tmp_path / "nfe2" / "flowdec.json").read_text())["default_nfe"] == 2
    r = _run("roundtrip", wav, tmp_path / "d.wav", "--model", tmp_path / "nfe2", "--device", "cpu", "--seed", "1")
    assert r.exit_code == 0 and "NFE 2" in r.output, r.output
    # the postfilter's weights stored at half size: the folder is smaller and decodes as before, nearly
    r = _run("train", "export", tmp_path / "half", "--ndac", run, "--postfilter", pf_run, "--postfilter-dtype",
             "float16")
    assert r.exit_code == 0, r.output
    half_pf, full_pf = (tmp_path / n / "postfilter" / "model.safetensors" for n in ("half", "nfe2"))
    assert half_pf.stat().st_size < full_pf.stat().st_size  # the tiny net's window and sigma_y weigh as much
    from safetensors import safe_open

    from flowdec_cli.postfilter import Postfilter

    learned = {k for k, _ in Postfilter.load(half_pf.parent).named_parameters()}
    with safe_open(str(half_pf), framework="pt") as f:  # the learned weights halved, the buffers as they were
        halved = {k for k in f.keys() if f.get_slice(k).get_dtype() == "F16"}  # noqa: SIM118
    assert learned and halved == learned
    r = _run("roundtrip", wav, tmp_path / "h.wav", "--model", tmp_path / "half", "--nfe", "2", "--device", "cpu",
             "-q", "--seed", "1")
    assert r.exit_code == 0, r.output
    h, _ = sf.read(tmp_path / "h.wav", always_2d=True)
    assert np.abs(h - y).max() < 0.05 * np.abs(y).max()
    r = _run("train", "export", tmp_path / "bf", "--ndac", run, "--postfilter", pf_run, "--postfilter-dtype", "bf16")
    assert r.exit_code == 2 and "'--postfilter-dtype'" in r.output and not (tmp_path / "bf").exists()

    # the side channel in training: pairs whose coded side has it applied, and a model that applies it to D0
    # before its postfilter as well
    from flowdec_cli import envelope as env

    env_args = ["-o", tmp_path / "pairs-env", "-n", "3", "--device", "cpu", "-q"]
    r = _run("train", "prepare-pairs", tmp_path / "clips", "--ndac", run, *env_args, "--envelope", "bands15")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "pairs-env" / "prepare.json").read_text())["envelope"] == "bands15"
    assert "made with envelope 'bands15'" in _one_error_line(_run("train", "prepare-pairs", tmp_path / "clips",
                                                                  "--ndac", run, *env_args))
    clean_p, coded_p = (tmp_path / "pairs-env" / "train.txt").read_text().splitlines()[0].split(",")
    plain_p = coded_p.replace("pairs-env", "pairs")
    n = sf.info(coded_p).frames
    levels = [env.measure(env.BANDS15, sf.read(p, dtype="float32", always_2d=True)[0].T[:, :n], n)
              for p in (clean_p, coded_p, plain_p)]
    assert np.abs(levels[1] - levels[0]).mean() < np.abs(levels[2] - levels[0]).mean()
    flags = ["--ndac", run, "--postfilter", pf_run, "--envelope", "bands15"]
    assert _run("train", "export", tmp_path / "env-after", *flags).exit_code == 0
    # a pair's coded side is what decoding a .fdc file gives the postfilter: the side channel measured and
    # applied over the codes' span, not the clip's (clip00: 48 kHz mono, 0.3 s, not a whole number of frames)
    pair_lines = [line.split(",") for name in ("train", "validation", "test")
                  if (tmp_path / "pairs-env" / f"{name}.txt").is_file()
                  for line in (tmp_path / "pairs-env" / f"{name}.txt").read_text().splitlines()]
    coded00 = next(c for k, c in pair_lines if k.endswith("clip00.wav"))
    r = _run("roundtrip", tmp_path / "clips" / "clip00.wav", tmp_path / "d0-env.wav", "--model", tmp_path / "env-after",
             "-n", "3", "--nfe", "0", "--subtype", "FLOAT", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    decoded, paired = (sf.read(p, dtype="float32")[0] for p in (tmp_path / "d0-env.wav", coded00))
    assert decoded.shape == paired.shape and np.abs(decoded - paired).max() < 1e-4
    assert _run("train", "export", tmp_path / "env-both", *flags, "--envelope-before-postfilter").exit_code == 0
    assert json.loads((tmp_path / "env-both" / "flowdec.json").read_text())["envelope_before_postfilter"] is True
    assert "needs --envelope" in _one_error_line(_run("train", "export", tmp_path / "bad", "--ndac", run,
                                                      "--postfilter", pf_run, "--envelope-before-postfilter"))
    # a rate plan: each codebook count with its own layout, recorded in the card and followed by -b
    rates = json.loads((tmp_path / "env-both" / "flowdec.json").read_text())["bitrates_kbps"]
    layouts = ["bands15-85ms"] * (len(rates) - 1) + ["bands30-21ms"]
    plan = [{"codebooks": k, "kbps": r + 0.5 + k, "envelope": lay} for k, (r, lay) in enumerate(zip(rates, layouts), 1)]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    r = _run("train", "export", tmp_path / "planned", *flags, "--rate-plan", tmp_path / "plan.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "planned" / "flowdec.json").read_text())["rate_plan"] == plan
    r = _run("compress", wav, tmp_path / "p.fdc", "--model", tmp_path / "planned", "-b", str(plan[-1]["kbps"]),
             "--device", "cpu", "-q")
    assert r.exit_code == 0 and inspect_fdc(tmp_path / "p.fdc").envelope_layout == "bands30-21ms", r.output
    # a plan that sends pitch to a postfilter that does not read it would buy nothing with those bits
    (tmp_path / "pitch-plan.json").write_text(json.dumps([{**e, "pitch": "f0-24ms"} for e in plan]))
    assert "does not read it" in _one_error_line(_run("train", "export", tmp_path / "bad", *flags, "--rate-plan",
                                                      tmp_path / "pitch-plan.json"))
    (tmp_path / "bad-plan.json").write_text(json.dumps(plan[:-1]))
    assert f"no entry for {len(rates)} codebooks" in _one_error_line(_run(
        "train", "export", tmp_path / "bad", *flags, "--rate-plan", tmp_path / "bad-plan.json"))
    (tmp_path / "bad-plan.json").write_text("{not json")
    assert "not a readable JSON file" in _run("train", "export", tmp_path / "bad", *flags,
                                              "--rate-plan", tmp_path / "bad-plan.json").output
    outs = []
    for name in ("env-after", "env-both"):
        r = _run("roundtrip", wav, tmp_path / f"{name}.wav", "--model", tmp_path / name, "--nfe", "2", "--device",
                 "cpu", "--seed", "1", "-q")
        assert r.exit_code == 0, r.output
        outs.append(sf.read(tmp_path / f"{name}.wav")[0])
    assert outs[0].shape == outs[1].shape and np.abs(outs[0] - outs[1]).max() > 1e-4
    r = _run("train", "export", tmp_path / "codec", "--ndac", run)
    assert r.exit_code == 0 and load_model(tmp_path / "codec").default_nfe == 0
    r = _run("roundtrip", wav, tmp_path / "e.wav", "--model", tmp_path / "codec", "--device", "cpu")
    assert r.exit_code == 0 and "NFE 0" in r.output, r.output
    r = _run("train", "export", tmp_path / "bad", "--ndac", run, "--default-nfe", "6")
    assert "default NFE 6" in _one_error_line(r)


def test_train_errors_are_one_line(tmp_path):
    r = _run("train", "ndac", tmp_path / "missing.toml")
    assert "no such config file" in _one_error_line(r)
    (tmp_path / "bad.toml").write_text("[model]\nencoder_dimm = 3\n")
    r = _run("train", "ndac", tmp_path / "bad.toml")
    assert "unknown key encoder_dimm" in _one_error_line(r)
    (tmp_path / "ok.toml").write_text(f'[data]\ntrain = ["nowhere"]\n[train]\nout_dir = "{tmp_path / "r"}"\n')
    r = _run("train", "ndac", tmp_path / "ok.toml", "--resume")
    assert "no checkpoints to resume from" in _one_error_line(r)
    r = _run("train", "ndac", tmp_path / "ok.toml", "--device", "cpu", "--set", "model.encoder_dim=4")
    assert "nowhere: no such folder or file list" in _one_error_line(r)
    r = _run("train", "postfilter", tmp_path / "ok.toml", "--device", "cpu")
    assert "no such pair list" in _one_error_line(r)
    for bad in ("data.nosuch=1", "data.batch_size=x", "nodot=1"):  # the command line's fault: usage, exit 2
        r = _run("train", "ndac", tmp_path / "ok.toml", "--device", "cpu", "--set", bad)
        assert r.exit_code == 2 and "flowdec: error: --set " in r.output and "Traceback" not in r.output, r.output
    r = _run("train", "export", tmp_path / "m", "--ndac", tmp_path)
    assert "holds no NDAC" in _one_error_line(r)


def test_a_run_ended_by_timeout_saves_its_steps_although_its_loader_workers_get_the_signal_too(tmp_path):
    """GNU ``timeout`` and batch schedulers send SIGTERM to the whole process group, DataLoader workers
    included; a worker killed by it used to turn the clean stop into 'DataLoader worker ... killed by signal:
    Terminated', losing the steps since the last checkpoint."""
    write_clips(tmp_path / "clips", 4, seconds=0.3)
    config = NDAC_TOML.replace("num_workers = 0", "num_workers = 1").replace("max_steps = 100", "max_steps = 100000")
    (tmp_path / "ndac.toml").write_text(config)
    p = spawn("train", "ndac", "ndac.toml", "--device", "cpu", "--threads", "1", "-q", cwd=tmp_path,
              start_new_session=True)
    metrics = tmp_path / "runs" / "ndac" / "metrics.csv"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count(",train,loss,") >= 3):
        assert p.poll() is None and time.time() < deadline, p.communicate()[1] if p.poll() is not None else "slow"
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGTERM)  # what `timeout` does: the signal reaches the workers too
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "DataLoader" not in err and "unexpected" not in err, err
    latest = (tmp_path / "runs" / "ndac" / "checkpoints" / "latest").read_text().strip()
    assert int(latest.split("-")[1]) >= 3


def test_one_bad_file_of_a_batch_is_reported_and_the_others_are_used(tmp_path, tiny_codec_dir):
    """prepare-pairs and entropy-tables over a corpus with a file that is not audio and one with NaN."""
    import shutil

    clips = tmp_path / "clips"
    write_clips(clips, 3, seconds=0.5)
    (clips / "junk.wav").write_text("not audio")
    nan = np.zeros(4800, np.float32)
    nan[10] = np.nan
    sf.write(clips / "nan.wav", nan, 48000, subtype="FLOAT")
    r = _run("train", "prepare-pairs", clips, "--ndac", tiny_codec_dir, "-o", tmp_path / "pairs", "-n", "2",
             "--device", "cpu", "-q")
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 3 and "Traceback" not in r.output, r.output
    assert "junk.wav: not a readable audio file" in lines[0] and "nan.wav: contains NaN" in lines[1]
    assert lines[2] == "flowdec: error: 2 file(s) could not be used; the other 3 were"
    summary = json.loads((tmp_path / "pairs" / "prepare.json").read_text())
    assert summary["files"] == 3 and sum(summary["pairs"].values()) == 3 and len(summary["failed"]) == 2
    folder = tmp_path / "model"
    shutil.copytree(tiny_codec_dir, folder)
    r = _run("train", "entropy-tables", folder, clips, "--prev-classes", "4", "--up-classes", "4")
    assert r.exit_code == 1 and "from 3 files" in r.output and "junk.wav: not a readable audio file" in r.output
    assert (folder / "entropy.safetensors").is_file()
    r = _run("train", "entropy-tables", folder, clips / "clip00.wav", "-f")  # one audio file, as training takes it
    assert r.exit_code == 0 and "from 1 file" in r.output, r.output
    (tmp_path / "list.bin").write_bytes(b"\xff\xfe\x00 not text")
    r = _run("train", "entropy-tables", folder, tmp_path / "list.bin", "-f")
    assert r.exit_code == 1 and "list.bin: cannot read the file list" in _one_error_line(r)


def test_a_file_whose_name_would_break_the_pair_lists_is_reported_and_the_rest_listed(tmp_path, tiny_codec_dir):
    """A comma in one file's name coded every file, then wrote no list at all (and left its coded file)."""
    clips = tmp_path / "clips"
    write_clips(clips, 2, seconds=0.5)
    (clips / "clip00.wav").rename(clips / "ünï cödé, a.wav")
    out = tmp_path / "pairs"
    r = _run("train", "prepare-pairs", clips, "--ndac", tiny_codec_dir, "-o", out, "-n", "2", "--device", "cpu",
             "-q", "--validation-fraction", "0", "--test-fraction", "0")
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 2 and "Traceback" not in r.output, r.output
    assert "ünï cödé, a.wav: a comma or line break in its name" in lines[0]
    assert lines[1] == "flowdec: error: 1 file(s) could not be used; the other 1 were"
    assert (out / "train.txt").read_text().count("\n") == 1 and "clip01.wav" in (out / "train.txt").read_text()
    assert [p.name for p in (out / "coded" / "nq2").iterdir()] == ["clip01.wav"]  # nothing coded for it
    odd = tmp_path / "a,b"
    r = _run("train", "prepare-pairs", clips, "--ndac", tiny_codec_dir, "-o", odd, "-n", "2", "--device", "cpu", "-q")
    assert r.exit_code == 1 and "output folder's path would break every line" in _one_error_line(r)
    assert not odd.exists()


@pytest.mark.parametrize("name", ["a/b", "../up", "~x", "model.safetensors"])
def test_a_model_is_not_exported_under_a_name_its_files_could_not_name(tmp_path, tiny_codec_dir, name):
    """A .fdc names its model and a path-like name there is refused, so such a model could never decode
    its own files by name."""
    r = _run("train", "export", tmp_path / "out", "--ndac", tiny_codec_dir, "--name", name, "-q")
    assert r.exit_code == 1 and "looks like a path" in _one_error_line(r)
    assert not (tmp_path / "out").exists()
    r = _run("train", "export", tmp_path / "out", "--ndac", tiny_codec_dir, "--trained-codebooks", "x", "-q")
    assert r.exit_code == 2 and "--trained-codebooks" in r.output


def test_small_training_cli_habits(tmp_path, monkeypatch):
    """init-config -o - prints the config; a folder given as CONFIG or a missing --ndac says what it is."""
    monkeypatch.chdir(tmp_path)
    r = _run("train", "init-config", "ndac-tiny", "-o", "-")
    assert r.exit_code == 0 and r.stdout.startswith("# A tiny NDAC") and not (tmp_path / "-").exists()
    r = _run("train", "init-config", "ndac-tiny", "-o", "ndac.yaml")  # TOML under a YAML name failed on load
    assert r.exit_code == 2 and "give a name ending in .toml" in r.output and not (tmp_path / "ndac.yaml").exists()
    r = _run("train", "init-config", "ndac-tiny", "--list")
    assert r.exit_code == 2 and "--list only lists the names" in r.output
    r = _run("train", "init-config", "nosuch")  # a usage error, as -m naming no model is
    assert r.exit_code == 2 and "unknown config 'nosuch'; choose from" in r.output and "ndac-tiny" in r.output
    r = _run("train", "ndac", tmp_path, "-q")
    assert r.exit_code == 1 and f"{tmp_path}: is a folder, not a config file" in _one_error_line(r)
    r = _run("train", "export", tmp_path / "out", "--ndac", tmp_path / "nosuch", "-q")
    assert r.exit_code == 1 and f"{tmp_path / 'nosuch'}: no such file or folder" in _one_error_line(r)


@pytest.mark.parametrize("args", [
    ["estimate-sigma", "--pairs", "p.txt", "-o", "s.json", "--alpha", "nan"],
    ["estimate-sigma", "--pairs", "p.txt", "-o", "s.json", "--qx", "nan"],
    ["widen-ndac", "in", "out", "--decoder-factor", "2", "--noise", "nan"],
    ["prepare-pairs", "clips", "--ndac", "x", "-o", "p", "--validation-fraction", "nan"],
])
def test_nan_is_a_usage_error_not_a_value(args, tmp_path, monkeypatch):
    """click's FloatRange lets NaN through its bounds; these options refuse it before anything runs."""
    monkeypatch.chdir(tmp_path)
    r = _run("train", *args)
    assert r.exit_code == 2 and "'nan' is not a number" in r.output, r.output


@pytest.mark.parametrize("args", [["prepare-pairs", "clips", "--ndac", "x", "-o", "p"],
                                  ["export", "out", "--ndac", "x"]])
def test_a_mistyped_envelope_layout_is_a_usage_error(args, tmp_path, monkeypatch):
    """'--envelope bogus' said the layout was unknown to this flowdec and to upgrade it (exit 1)."""
    monkeypatch.chdir(tmp_path)
    r = _run("train", *args, "--envelope", "bogus")
    assert r.exit_code == 2 and "'bogus' is not one of 'bands15'" in r.output and "upgrade" not in r.output


@pytest.mark.parametrize("args", [["corpus", "encode", "in", "out"], ["eval", "in", "--codec", "m"]])
def test_threads_beyond_the_limit_are_a_usage_error_in_corpus_and_eval_too(args, tmp_path, monkeypatch):
    """corpus encode said 'unexpected ValueError' and eval --codec had no --threads."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    r = _run(*args, "--threads", "5000")
    assert r.exit_code == 2 and "'--threads': 5000 is not in the range 1<=x<=1024" in r.output, r.output


@pytest.mark.parametrize("args", [["prepare-pairs", "clips", "--ndac", "x", "-o", "p"],
                                  ["estimate-sigma", "--pairs", "p.txt", "-o", "s.json"], ["ndac", "c.toml"],
                                  ["entropy-tables", "m", "clips"]])
def test_every_training_command_that_runs_a_network_takes_threads(args, tmp_path, monkeypatch):
    """prepare-pairs and estimate-sigma had no --threads: beside a training run they took every core."""
    monkeypatch.chdir(tmp_path)
    r = _run("train", *args, "--threads", "5000")
    assert r.exit_code == 2 and "'--threads': 5000 is not in the range 1<=x<=1024" in r.output, r.output
    import flowdec_cli.runtime

    def stop_here(n):
        raise ValueError(f"set_threads({n}) reached")

    monkeypatch.setattr(flowdec_cli.runtime, "set_threads", stop_here)  # applied before any work, not ignored
    if args[0] in ("prepare-pairs", "estimate-sigma"):
        r = _run("train", *args, "--threads", "3")
        assert "set_threads(3) reached" in r.output, r.output


def test_help_texts_state_the_defaults_and_ranges_the_code_has():
    """Help texts that repeat a number are checked against where it lives."""
    from flowdec_cli.sampler import MAX_TEMPERATURE
    from flowdec_cli.training.entropy_tables import TableSettings

    defaults = TableSettings()
    text = " ".join(_run("train", "entropy-tables", "--help").output.split())
    assert f"previous frame's code (0: none; default {defaults.prev_classes})" in text
    assert f"coarser codebook's code (0: none; default {defaults.up_classes})" in text
    assert f"(default {defaults.smoothing:g})" in text
    for args in (("train", "export", "--help"), ("decompress", "--help")):
        assert f"0 to {MAX_TEMPERATURE:g}" in " ".join(_run(*args).output.split()), args
    from flowdec_cli.sampler import MAX_NFE, SOLVERS

    for verb in ("decompress", "roundtrip"):
        text = " ".join(_run(verb, "--help").output.split())
        assert f"up to {MAX_NFE} (even with the midpoint solver: {SOLVERS['midpoint']} a step)" in text, verb
