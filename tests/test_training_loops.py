"""A few training steps of each stage on tiny models: the loss goes down, resuming continues exactly."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowdec_cli.postfilter import Postfilter
from flowdec_cli.training.common import TrainingError, find_checkpoint, load_checkpoint
from flowdec_cli.training.config import ConfigError, config_from_dict
from flowdec_cli.training.ndac_trainer import NDACTrainer
from flowdec_cli.training.postfilter_trainer import PostfilterTrainer

from .test_training_helpers import (  # noqa: F401
    TINY_NDAC_MODEL,
    fast_cpu,
    fast_cpu_settings,
    ndac_dict,
    postfilter_dict,
    write_clips,
    write_pairs_files,
)

pytestmark = pytest.mark.usefixtures("fast_cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_clips(folder, 4, seconds=0.3)
    return folder


@pytest.fixture(scope="module")
def pair_list(tmp_path_factory):
    return write_pairs_files(tmp_path_factory.mktemp("pairs"), 4, seconds=0.3, noise=0.05)[0]


def _ndac(clips, out, **sections):
    return config_from_dict("ndac", ndac_dict([str(clips)], out, **sections))


def _pf(pair_list, out, **sections):
    return config_from_dict("postfilter", postfilter_dict([str(pair_list)], out, [str(pair_list)], **sections))


@pytest.fixture(scope="module")
def ndac_run(clips, tmp_path_factory):
    """4 uninterrupted steps (with quantizer dropout and random crops), checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ndac") / "run"
    t = NDACTrainer(_ndac(clips, out, train=dict(checkpoint_every=2)), device="cpu", quiet=True)
    with fast_cpu_settings():
        t.run()
    return t


def test_ndac_steps_lower_the_loss(clips, tmp_path):
    # one fixed excerpt, no augmentation and no dropout: the same batch every step
    first = str(sorted(clips.iterdir())[0])
    cfg = _ndac(clips, tmp_path / "run", data=dict(batch_size=1, gain_db=[0.0, 0.0], loudness_db=None,
                                                  random_polarity=False, train=[first], validation=[first]),
                model=dict(quantizer_dropout=0.0), optim=dict(lr=3e-3), train=dict(max_steps=6, val_every=6),
                validation=dict(max_seconds=0.1, n_codebooks=[1, 3]))
    t = NDACTrainer(cfg, device="cpu", quiet=True)
    t.run()
    losses = [h["loss"] for h in t.history]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses
    assert {"loss_mel", "loss_cqt", "loss_waveform", "loss_commitment", "loss_codebook", "lr", "grad_norm"} <= \
        set(t.history[-1])
    usage = {f"{m}_cb{k}" for k in range(3) for m in ("used", "perplexity")}
    scores = {f"{m}_nq{k}" for k in (1, 3) for m in ("mel_loss", "si_sdr", "coherence")}
    assert set(t.last_validation) == scores | usage
    assert all(0 <= t.last_validation[f"coherence_nq{k}"] <= 1 for k in (1, 3))
    assert all(0 < t.last_validation[f"used_cb{k}"] <= 1 for k in range(3))
    assert t.last_validation["mel_loss_nq3"] < t.last_validation["mel_loss_nq1"] * 1.5
    run = tmp_path / "run"
    assert (run / "model" / "ndac" / "model.safetensors").is_file() and (run / "metrics.csv").is_file()
    assert json.loads((run / "model" / "flowdec.json").read_text())["name"] == "run"
    assert ",validation,si_sdr_nq3," in (run / "metrics.csv").read_text()


def test_validation_lines_go_to_stderr_as_flowdec_messages(clips, tmp_path, capsys):
    """They went to standard output, without the `flowdec: ndac:` every other message of a run starts with."""
    first = str(sorted(clips.iterdir())[0])
    cfg = _ndac(clips, tmp_path / "run", data=dict(validation=[first]),
                train=dict(max_steps=1, val_every=1, progress=True), validation=dict(max_seconds=0.1, n_codebooks=[1]))
    NDACTrainer(cfg, device="cpu").run()
    out, err = capsys.readouterr()
    assert "step 1:" not in out
    assert re.search(r"^flowdec: ndac: step 1: mel_loss_nq1 ", err, re.M), err


def test_ndac_trains_only_the_parts_named(clips, tmp_path):
    """optim.train_parts = ["encoder"]: the decoder and the codebooks keep their weights, so every code an
    existing file holds decodes as before; the encoder learns."""
    first = str(sorted(clips.iterdir())[0])
    cfg = _ndac(clips, tmp_path / "run", data=dict(batch_size=1, train=[first], validation=[first]),
                optim=dict(lr=3e-3, train_parts=["encoder"]), train=dict(max_steps=2, val_every=0),
                validation=dict(max_seconds=0.1, n_codebooks=[1]))
    t = NDACTrainer(cfg, device="cpu", quiet=True)
    before: dict[str, torch.Tensor] = {}
    build = t.build

    def build_and_remember() -> None:
        build()
        before.update({k: v.clone() for k, v in t.model.state_dict().items()})

    t.build = build_and_remember  # type: ignore[method-assign]
    t.run()
    after = t.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("encoder.") for k in moved), sorted(moved)[:5]
    for bad, why in ((["encoder", "encoder"], "distinct"), (["vocoder"], "distinct parts")):
        with pytest.raises(Exception, match=why):
            _ndac(clips, tmp_path / "x", optim=dict(train_parts=bad))
    with pytest.raises(Exception, match="needs 'quantizer'"):
        _ndac(clips, tmp_path / "x", optim=dict(train_parts=["encoder"], revive_dead_codes_every=10))


def test_ndac_resume_continues_where_it_stopped(ndac_run, clips, tmp_path, capsys):
    src = ndac_run.run_dir / "checkpoints" / "step-00000002"
    resumed = NDACTrainer(_ndac(clips, tmp_path / "b"), device="cpu", resume=str(src))
    resumed.run()
    assert "settings changed" not in capsys.readouterr().err  # another folder and cadence change nothing
    assert resumed.step == 4 and find_checkpoint(tmp_path / "b").name == "step-00000004"
    a, b = ndac_run.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    ca, cb = load_checkpoint(ndac_run.run_dir), load_checkpoint(tmp_path / "b")
    assert ca["trainer"]["scheduler"]["last_epoch"] == cb["trainer"]["scheduler"]["last_epoch"] == 4
    for pid, st in ca["optimizer"]["state"].items():
        assert torch.allclose(st["exp_avg_sq"], cb["optimizer"]["state"][pid]["exp_avg_sq"], rtol=1e-4, atol=1e-12)
    # resuming a finished run does nothing; the log keeps each step once
    again = NDACTrainer(_ndac(clips, ndac_run.run_dir), device="cpu", resume=True, quiet=True)
    again.run()
    assert again.step == 4
    steps = [line.split(",")[0] for line in (ndac_run.run_dir / "metrics.csv").read_text().splitlines()[1:]
             if ",train,loss," in line]
    assert steps == ["1", "2", "3", "4"]


def test_a_resumed_run_replaces_its_model_and_keeps_what_a_user_put_beside_it(ndac_run, clips, tmp_path):
    """RUN/model was exchanged whole when a resumed run finished: notes (or a hub repo's .git) put there went
    with it. Now only what a model owns is replaced, and the old codec's entropy tables, stale, go."""
    from flowdec_cli.models.folder import ENTROPY_TABLES_NAME

    run = tmp_path / "run"
    shutil.copytree(ndac_run.run_dir, run)
    (run / "model" / "notes.txt").write_text("mine")
    (run / "model" / ENTROPY_TABLES_NAME).write_bytes(b"tables of the codec at step 4")
    before = (run / "model" / "ndac" / "model.safetensors").read_bytes()
    NDACTrainer(_ndac(clips, run), device="cpu", resume=True, max_steps=5, quiet=True).run()
    assert (run / "model" / "notes.txt").read_text() == "mine"
    assert not (run / "model" / ENTROPY_TABLES_NAME).exists()
    assert (run / "model" / "ndac" / "model.safetensors").read_bytes() != before
    assert json.loads((run / "model" / "flowdec.json").read_text())["description"].endswith("for 5 steps (codec only)")


def test_resuming_with_changed_settings_says_which_and_whether_the_batches_change(ndac_run, clips, tmp_path,
                                                                                    capsys):
    """A resume with another batch size or rate was accepted in silence: the run is no longer the one an
    uninterrupted run would have been."""
    from flowdec_cli.training.base import settings_changed

    src = ndac_run.run_dir / "checkpoints" / "step-00000002"
    batch = _ndac(clips, tmp_path / "x").data.batch_size
    cfg = _ndac(clips, tmp_path / "c", data=dict(batch_size=batch + 1), optim=dict(lr=1e-5),
                train=dict(max_steps=3))
    NDACTrainer(cfg, device="cpu", resume=str(src)).run()
    err = capsys.readouterr().err
    assert f"resuming step 2 with settings changed since that checkpoint: data.batch_size {batch} -> {batch + 1}" in err
    assert "optim.lr" in err and "not the ones an uninterrupted run would have drawn" in err
    assert "max_steps" not in err and "out_dir" not in err
    state = load_checkpoint(src)["trainer"]
    from flowdec_cli.training.config import config_to_dict

    same = config_to_dict(_ndac(clips, tmp_path / "d", optim=dict(lr=1e-5)))
    assert settings_changed(state, same, 1) == [f"optim.lr {state['config']['optim']['lr']!r} -> 1e-05"]
    assert settings_changed(state, config_to_dict(_ndac(clips, tmp_path / "d")), 2)[-1].startswith("its batches")
    assert settings_changed({}, same, 1) == []  # a checkpoint without a recorded config


def test_interrupt_saves_a_checkpoint_and_resume_goes_on(clips, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or `timeout --signal=INT`, how a time budget ends a run) keeps the steps done so far."""
    cfg = _ndac(clips, tmp_path / "run", train=dict(checkpoint_every=100, max_steps=5))
    t = NDACTrainer(cfg, device="cpu")
    real_step = t.train_step

    def step_then_interrupt(batch, log_now):
        if t.step == 3:
            raise KeyboardInterrupt
        return real_step(batch, log_now)

    monkeypatch.setattr(t, "train_step", step_then_interrupt)
    real_save, handlers = t._save, []

    def save_noting_the_handler():  # a second Ctrl-C during the save left only a .part folder
        handlers.append(signal.getsignal(signal.SIGINT))
        real_save()

    monkeypatch.setattr(t, "_save", save_noting_the_handler)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN already in a background job
    with pytest.raises(KeyboardInterrupt):
        t.run()
    assert handlers == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) == before
    assert find_checkpoint(tmp_path / "run").name == "step-00000003"
    assert "interrupted at step 3" in capsys.readouterr().err
    resumed = NDACTrainer(cfg, device="cpu", resume=True, quiet=True)
    resumed.run()
    assert resumed.step == 5 and find_checkpoint(tmp_path / "run").name == "step-00000005"
    damaged = find_checkpoint(tmp_path / "run") / "optimizer.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(TrainingError, match=r"step-00000005: unreadable checkpoint .*--resume-from"):
        load_checkpoint(tmp_path / "run")


def test_a_bad_training_file_met_mid_run_keeps_the_steps_done(clips, tmp_path, monkeypatch, capsys):
    """Files are read when a batch first needs them: a bad one ended a run hours in with the steps since
    the last checkpoint lost. The failed batch was never stepped on, so the weights are saved as they are."""
    from flowdec_cli.training.data import DataError

    cfg = _ndac(clips, tmp_path / "run", train=dict(checkpoint_every=100, max_steps=5))
    t = NDACTrainer(cfg, device="cpu")
    real_step = t.train_step

    def step_then_fail(batch, log_now):
        if t.step == 3:
            raise DataError("junk.wav: not a readable audio file")
        return real_step(batch, log_now)

    monkeypatch.setattr(t, "train_step", step_then_fail)
    with pytest.raises(DataError, match=r"junk\.wav"):
        t.run()
    assert find_checkpoint(tmp_path / "run").name == "step-00000003"
    assert "stopped by a training file it cannot read at step 3" in capsys.readouterr().err


def test_no_training_audio_names_where_it_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match=r"no training audio files in .*empty \(check data.train\)"):
        NDACTrainer(_ndac(tmp_path / "empty", tmp_path / "run"), device="cpu", quiet=True).run()


def test_a_fresh_run_starts_its_metrics_anew(clips, tmp_path):
    """A run that died before its first checkpoint left rows in metrics.csv; the next fresh run added its own
    after them (steps 1-4, then 1-2)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("step,time,split,name,value\n7,0.1,train,loss,9.0\n")
    NDACTrainer(_ndac(clips, out, train=dict(max_steps=2, log_every=1)), device="cpu", quiet=True).run()
    steps = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps and "7" not in steps and steps[0] == "1"


def test_resume_refuses_the_other_stage(ndac_run, pair_list, tmp_path):
    with pytest.raises(TrainingError, match="not a postfilter checkpoint"):
        PostfilterTrainer(_pf(pair_list, tmp_path / "p"), device="cpu", resume=str(ndac_run.run_dir),
                          quiet=True).run()


def test_postfilter_steps_lower_the_loss_and_keep_an_ema(pair_list, tmp_path):
    cfg = _pf(pair_list, tmp_path / "run", data=dict(batch_size=4), optim=dict(lr=3e-3),
              train=dict(max_steps=8, log_every=2, val_every=8, checkpoint_every=4))
    t = PostfilterTrainer(cfg, device="cpu", quiet=True)
    t.run()
    losses = [h["loss"] for h in t.history]
    assert losses[-1] < losses[0], losses
    assert set(t.last_validation) >= {"input_si_sdr", "si_sdr_nfe2", "log_spec_mse_nfe2"}
    raw, ema = t.pf.state_dict(), t.ema.state_dict()
    key = "backbone.all_modules.3.weight"
    assert not torch.equal(raw[key], ema[key])
    for k in ("sigma_y", "feature_extractor.complex_stft.window", "backbone.all_modules.0.W"):
        assert torch.equal(raw[k], ema[k])
    saved = load_file(str(tmp_path / "run" / "postfilter" / "model.safetensors"))
    assert torch.equal(saved[key], ema[key]) and saved["sigma_y"].dtype == torch.float64

    # resuming from step 4 reproduces both the raw and the EMA weights of step 8
    resumed = PostfilterTrainer(_pf(pair_list, tmp_path / "b", data=dict(batch_size=4), optim=dict(lr=3e-3),
                                    train=dict(max_steps=8, log_every=2)),
                                device="cpu", resume=str(tmp_path / "run" / "checkpoints" / "step-00000004"),
                                quiet=True)
    resumed.run()
    for mine, theirs in ((t.pf, resumed.pf), (t.ema, resumed.ema)):
        a, b = mine.state_dict(), theirs.state_dict()
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k

    # the config's learning rate applies to a resumed run (the checkpoint's would otherwise win)
    slower = PostfilterTrainer(_pf(pair_list, tmp_path / "c", data=dict(batch_size=4), optim=dict(lr=1e-3),
                                   train=dict(max_steps=4)),
                               device="cpu", resume=str(tmp_path / "run" / "checkpoints" / "step-00000004"),
                               quiet=True)
    slower.build()
    slower.restore(load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000004"))
    assert [g["lr"] for g in slower.optimizer.param_groups] == [1e-3]
    assert slower.optimizer.state_dict()["state"]  # Adam's moments came with it


def test_framewise_postfilter_trains_resumes_and_warm_starts(pair_list, tmp_path):
    """The frame-wise backbone goes through the same loop: the loss falls, the exported folder names its
    backbone, and a new run started from the exported weights (train.init_from) begins where it ended."""
    model = dict(backbone="framewise", dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8)
    cfg = _pf(pair_list, tmp_path / "run", model=model, data=dict(batch_size=4), optim=dict(lr=3e-3),
              train=dict(max_steps=12, log_every=2, val_every=12, checkpoint_every=6))
    t = PostfilterTrainer(cfg, device="cpu", quiet=True)
    t.run()
    losses = [h["loss"] for h in t.history]
    assert losses[-1] < losses[0], losses
    assert set(t.last_validation) >= {"si_sdr_nfe2", "log_spec_mse_nfe2"}
    folder = tmp_path / "run" / "postfilter"
    config = json.loads((folder / "config.json").read_text())
    assert config["backbone"] == "framewise" and config["framewise"]["dim"] == 16
    warm = PostfilterTrainer(_pf(pair_list, tmp_path / "warm", model=model, optim=dict(lr=3e-3),
                                 train=dict(max_steps=1, init_from=str(folder))), device="cpu", quiet=True)
    warm.build()
    warm.init_weights(folder)
    ema = t.ema.state_dict()
    for k, v in warm.pf.state_dict().items():
        assert torch.equal(v, ema[k]), k
    with pytest.raises(TrainingError,
                       match=re.escape("do not fit this config (another backbone or size): missing")):
        other = PostfilterTrainer(_pf(pair_list, tmp_path / "other", train=dict(max_steps=1)), device="cpu",
                                  quiet=True)
        other.build()
        other.init_weights(folder)


def test_a_postfilter_that_reads_pitch_validates_with_the_pitch_its_clips_would_send(pair_list, tmp_path,
                                                                                     monkeypatch):
    """Validation decodes each clip as a file would: the postfilter gets the clean clip's F0 as sent."""
    model = dict(backbone="framewise", dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8,
                 pitch_top_hz=8000)
    t = PostfilterTrainer(_pf(pair_list, tmp_path / "run", model=model, data=dict(batch_size=4),
                              train=dict(max_steps=2, val_every=2, checkpoint_every=0)), device="cpu", quiet=True)
    tracks = []
    enhance = Postfilter.enhance
    monkeypatch.setattr(Postfilter, "enhance", lambda self, *a, pitch=None, **k: tracks.append(pitch)
                        or enhance(self, *a, pitch=pitch, **k))
    t.run()
    assert {"si_sdr_nfe2", "log_spec_mse_nfe2"} <= set(t.last_validation)
    assert tracks and all(p is not None and (p > 0).any() for p in tracks)  # the tones are voiced


def _context_branch_trained(backbone) -> bool:
    branch = backbone.blocks[0].context
    return branch is not None and branch.dilation == (3,) and bool(branch.weight.any())


def _spectral_branch_trained(backbone) -> bool:
    return backbone.spectral is not None and bool(backbone.spectral.out.weight.any())


def _pitch_paths_trained(backbone) -> bool:
    return backbone.takes_pitch and bool(backbone.pitch_embed.weight.any()) and bool(backbone.pitch_head.any())


@pytest.mark.parametrize("setting, value, trained", [("context_dilation", 3, _context_branch_trained),
                                                     ("spectral_channels", 4, _spectral_branch_trained),
                                                     ("pitch_top_hz", 8000, _pitch_paths_trained)])
def test_framewise_postfilter_grows_a_branch_from_weights_without_one(pair_list, tmp_path, setting, value,
                                                                      trained):
    """``model.context_dilation``, ``model.spectral_channels`` or ``model.pitch_top_hz`` on top of weights
    trained without it: what the branch adds starts at zero (the grown model computes what the source did),
    it trains (the pitch paths on the F0 of the clean side, a voiced tone here), and the exported folder
    records the setting."""
    model = dict(backbone="framewise", dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8)
    plain = PostfilterTrainer(_pf(pair_list, tmp_path / "plain", model=model, data=dict(batch_size=4),
                                  train=dict(max_steps=2, val_every=0, checkpoint_every=0)),
                              device="cpu", quiet=True)
    plain.run()
    source = tmp_path / "plain" / "postfilter"
    assert setting not in json.loads((source / "config.json").read_text())["framewise"]
    again = PostfilterTrainer(_pf(pair_list, tmp_path / "plain", model=model, data=dict(batch_size=4),
                                  train=dict(max_steps=1, val_every=0, checkpoint_every=0)),
                              device="cpu", quiet=True)
    latest = (tmp_path / "plain" / "checkpoints" / "latest").read_text()
    with pytest.raises(TrainingError, match="holds the checkpoints of an earlier run; --resume continues it"):
        again.run()  # a fresh run into a finished run's folder would overwrite and prune its checkpoints
    assert (tmp_path / "plain" / "checkpoints" / "latest").read_text() == latest
    grown = PostfilterTrainer(_pf(pair_list, tmp_path / "grown", model={**model, setting: value},
                                  data=dict(batch_size=4), optim=dict(lr=3e-3),
                                  train=dict(max_steps=3, val_every=0, checkpoint_every=0,
                                             init_from=str(source))),
                              device="cpu", quiet=True)
    grown.build()
    grown.init_weights(source)
    Y = torch.randn(1, 1, 768, 30, dtype=torch.complex64)
    x = torch.randn(1, 1, 768, 30, dtype=torch.complex64)
    assert torch.equal(grown.pf.velocity(x, Y, 0.4), plain.ema.velocity(x, Y, 0.4))
    grown.run()
    assert trained(grown.ema.backbone)
    config = json.loads((tmp_path / "grown" / "postfilter" / "config.json").read_text())
    assert config["framewise"][setting] == value
    with pytest.raises(ConfigError, match=f"{setting} must be 0"):
        _pf(pair_list, tmp_path / "bad", model={**model, setting: -1})


def test_a_postfilter_started_from_weights_keeps_their_sigma_y_and_says_so(pair_list, tmp_path, capsys):
    """sigma_y is part of what a trained network means (it reads its inputs in sigma_y units), so
    ``train.init_from`` brings it along; a config that asks for another one is told it is not used."""
    model = dict(backbone="framewise", dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8)
    steps = dict(max_steps=1, val_every=0, checkpoint_every=0)
    PostfilterTrainer(_pf(pair_list, tmp_path / "first", model=model, sigma=dict(value=0.3), train=steps),
                      device="cpu", quiet=True).run()
    source = tmp_path / "first" / "postfilter"
    capsys.readouterr()
    for value, told in ((0.3, False), (0.5, True)):
        t = PostfilterTrainer(_pf(pair_list, tmp_path / f"from-{value}", model=model, sigma=dict(value=value),
                                  train={**steps, "init_from": str(source)}), device="cpu")
        t.build()
        t.init_weights(source)
        assert torch.allclose(t.pf.sigma_y, torch.full_like(t.pf.sigma_y, 0.3))
        assert torch.equal(t.ema.sigma_y, t.pf.sigma_y)
        err = capsys.readouterr().err
        assert ("sigma_y comes with the weights" in err) == told, err
        if told:
            assert "(mean 0.300)" in err and "[sigma] (mean 0.500) is not used" in err


def test_postfilter_objective_with_coded_phase(pair_list, tmp_path):
    """``objective.target_phase = "coded"`` changes what the flow is trained on (same seed, another loss)
    and nothing else; an unknown value is refused."""
    model = dict(backbone="framewise", dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8)
    losses = {}
    for phase in ("clean", "coded"):
        t = PostfilterTrainer(_pf(pair_list, tmp_path / phase, model=model, data=dict(batch_size=4),
                                  objective=dict(target_phase=phase),
                                  train=dict(max_steps=2, log_every=1, val_every=0, checkpoint_every=0)),
                              device="cpu", quiet=True)
        t.run()
        losses[phase] = [h["loss"] for h in t.history]
    assert all(math.isfinite(v) for v in losses["coded"]) and losses["coded"][0] != losses["clean"][0]
    with pytest.raises(ConfigError, match="target_phase"):
        _pf(pair_list, tmp_path / "bad", objective=dict(target_phase="mixed"))


def test_postfilter_validation_samples_at_the_configured_temperature(pair_list, tmp_path):
    """``validation.temperature`` reaches the validation runs (at 0 the start noise, hence the seed, no longer
    matters) and nothing else: training and the folders the EMA is saved to keep FlowDec's 1. The Postfilter's
    own range rule refuses bad values as a TrainingError before any step."""
    model = dict(backbone="framewise", dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8)
    figures = {}
    for temperature in (0.0, 1.0):
        t = PostfilterTrainer(_pf(pair_list, tmp_path / f"t{temperature}", model=model,
                                  validation=dict(temperature=temperature)), device="cpu", quiet=True)
        t.build()
        figures[temperature] = [t.validate()]
        t.config.validation.seed = 5
        figures[temperature].append(t.validate())
        assert t.ema.temperature == 1.0 and t.pf.temperature == 1.0 and "temperature" not in t.ema.config
    assert figures[0.0][0] == figures[0.0][1]
    assert figures[1.0][0]["si_sdr_nfe2"] != figures[1.0][1]["si_sdr_nfe2"]
    with pytest.raises(TrainingError, match=r"validation\.temperature: .*from 0 to 2"):
        PostfilterTrainer(_pf(pair_list, tmp_path / "bad", model=model, validation=dict(temperature=3.0)),
                          device="cpu", quiet=True).build()


def test_ndac_latent_loss_and_dead_code_revival(clips, tmp_path):
    cfg = _ndac(clips, tmp_path / "run", loss=dict(latent_weight=2.0),
                optim=dict(revive_dead_codes_every=2), train=dict(max_steps=4))
    t = NDACTrainer(cfg, device="cpu", quiet=True)
    t.run()
    assert all("loss_latent" in h and h["loss_latent"] > 0 for h in t.history)
    revived = [h["revived_codes"] for h in t.history]
    # two revivals; 32-entry codebooks and a few dozen frames per window leave some entries unused; each
    # logged step says how many codes moved since the last one (none on the steps between)
    assert len(revived) == 4 and revived[0] == revived[2] == 0 and revived[1] > 0 and revived[3] > 0
    assert float(t.code_counts.sum()) == 0  # counts restart after each revival

    # direct: entries counted as used stay, the others land on latents of the batch, moments zeroed
    model = t.model
    book = model.quantizer.quantizers[0].codebook.weight
    before = book.detach().clone()
    state = t.optimizer.state[book]
    state["exp_avg"].fill_(1.0)
    t.code_counts.zero_()
    t.code_counts[:, :5] = 1  # entries 0-4 of every codebook were used
    latents = torch.full((1, model.n_codebooks * model.config.codebook_dim, 7), 3.0)
    assert t.revive_dead_codes(latents) == model.n_codebooks * (model.codebook_size - 5)
    assert torch.equal(book[:5], before[:5]) and bool((book[5:] == 3.0).all())
    assert bool((state["exp_avg"][:5] == 1).all()) and bool((state["exp_avg"][5:] == 0).all())


def test_ndac_config_refuses_negative_latent_weight_and_revival_period():

    with pytest.raises(ConfigError, match="latent_weight"):
        config_from_dict("ndac", ndac_dict(["x"], "out", loss=dict(latent_weight=-1.0)))
    with pytest.raises(ConfigError, match="revive_dead_codes_every"):
        config_from_dict("ndac", ndac_dict(["x"], "out", optim=dict(revive_dead_codes_every=-5)))


def test_annealed_lr_runs_log_linearly_between_its_end_points():
    from flowdec_cli.training.ndac_trainer import annealed_lr

    assert annealed_lr(1e-3, 1e-5, 0.0) == pytest.approx(1e-3)
    assert annealed_lr(1e-3, 1e-5, 0.5) == pytest.approx(1e-4)
    assert annealed_lr(1e-3, 1e-5, 1.0) == pytest.approx(1e-5)
    assert annealed_lr(1e-3, 1e-5, 7.0) == pytest.approx(1e-5)  # a budget overrun stays at the end


def test_ndac_lr_final_anneals_over_the_steps(clips, tmp_path):
    cfg = _ndac(clips, tmp_path / "run", optim=dict(lr=1e-3, lr_final=1e-5), train=dict(max_steps=4, log_every=1))
    t = NDACTrainer(cfg, device="cpu", quiet=True)
    t.run()
    lrs = [h["lr"] for h in t.history]
    # the rate of each step is set from the share of the run done before it: 0, 1/4, 2/4, 3/4
    assert lrs == pytest.approx([1e-3 * 1e-2 ** (k / 4) for k in range(4)], rel=1e-5)


def test_time_budget_ends_the_run_with_a_checkpoint_and_an_annealed_rate(clips, tmp_path, capsys):
    cfg = _ndac(clips, tmp_path / "run", optim=dict(lr=1e-3, lr_final=1e-5),
                train=dict(max_steps=10**6, max_seconds=1.0, log_every=1, checkpoint_every=10**6))
    t = NDACTrainer(cfg, device="cpu")
    t.run()
    assert 1 <= t.step < 10**6
    assert find_checkpoint(tmp_path / "run").name == f"step-{t.step:08d}"
    assert (tmp_path / "run" / "model" / "ndac" / "model.safetensors").is_file()
    assert f"time budget of 1 s reached at step {t.step}" in capsys.readouterr().err
    lrs = [h["lr"] for h in t.history]
    # by the clock: each step's rate is below the one before, between the two end points (a tiny model
    # takes well under the budget per step, so there are several)
    assert len(lrs) >= 2, lrs
    assert all(a > b for a, b in itertools.pairwise(lrs)) and 1e-5 <= lrs[-1] < lrs[0] <= 1e-3


def test_training_config_refuses_a_non_positive_budget_or_final_rate():

    with pytest.raises(ConfigError, match="max_seconds"):
        config_from_dict("ndac", ndac_dict(["x"], "out", train=dict(max_seconds=0)))
    with pytest.raises(ConfigError, match="max_seconds"):
        config_from_dict("postfilter", postfilter_dict(["x"], "out", ["x"], train=dict(max_seconds=-1.0)))
    with pytest.raises(ConfigError, match="lr_final"):
        config_from_dict("ndac", ndac_dict(["x"], "out", optim=dict(lr_final=0.0)))


def test_a_run_that_cannot_start_leaves_no_run_folder(pair_list, tmp_path):
    model = dict(backbone="framewise", dim=16, intermediate_dim=32, num_blocks=2, kernel_size=3, fourier_size=8)
    t = PostfilterTrainer(_pf(pair_list, tmp_path / "run", model=model, data=dict(batch_size=4096),
                              train=dict(max_steps=1)), device="cpu", quiet=True)
    with pytest.raises(TrainingError, match="yields no full batch of 4096"):
        t.run()
    assert not (tmp_path / "run").exists()  # no config.json or metrics.csv of a run that never ran


def test_validation_with_no_files_is_said_to_be_off(clips, tmp_path, capsys):
    """A small data folder whose split gave no validation files never validated, and nothing said so."""
    for val_every, said in ((1, True), (0, False)):
        cfg = _ndac(clips, tmp_path / f"run{val_every}", train=dict(val_every=val_every, max_steps=1))
        with fast_cpu_settings():
            NDACTrainer(cfg, device="cpu").run()
        assert ("no validation files" in capsys.readouterr().err) is said


def test_a_postfilter_batch_of_nothing_but_nan_losses_stops_the_run(pair_list, tmp_path, monkeypatch):
    """The loss leaves out examples whose loss is not finite; when that was all of them it read 0, the check
    for a non-finite loss never fired, and a run of NaN settings ended with exit 0 and NaN weights."""
    built = PostfilterTrainer.build

    def build_with_nan_sigma(self):
        built(self)
        self.pf.sigma_y.fill_(float("nan"))

    monkeypatch.setattr(PostfilterTrainer, "build", build_with_nan_sigma)
    t = PostfilterTrainer(_pf(pair_list, tmp_path / "run", data=dict(batch_size=2),
                              train=dict(max_steps=2, log_every=1, val_every=0, checkpoint_every=0)),
                          device="cpu", quiet=True)
    with pytest.raises(TrainingError, match="every example of the batch at step 1 gave a non-finite loss"):
        t.run()


def test_resuming_with_another_model_size_names_the_settings_that_changed(ndac_run, clips, tmp_path):
    """It listed every mismatched weight (the codec's cut at 200 characters mid-word)."""
    src = ndac_run.run_dir / "checkpoints" / "step-00000002"
    cfg = _ndac(clips, tmp_path / "b", model={**TINY_NDAC_MODEL, "latent_dim": 16})
    with pytest.raises(TrainingError, match=r"step-00000002: does not fit this config \(another size\?\): .* more\); "
                                            r"the run was trained with other model settings \(model.latent_dim 8 -> "
                                            r"16: the run's -> this config's\): resume"):
        NDACTrainer(cfg, device="cpu", resume=str(src), quiet=True).run()
    # a change of a setting that shapes no weight is not blamed for what another setting broke
    cfg = _ndac(clips, tmp_path / "c", model={**TINY_NDAC_MODEL, "quantizer_dropout": 0.25},
                optim=dict(train_parts=["decoder"]))
    with pytest.raises(TrainingError, match="its optimiser state does not fit this config") as info:
        NDACTrainer(cfg, device="cpu", resume=str(src), quiet=True).run()
    assert "quantizer_dropout" not in str(info.value)


@pytest.mark.parametrize("record", ["[]", "{}", '{"version": "abc", "optimizer": {}}',
                                    '{"version": 1, "optimizer": []}', '{"version": 1, "optimizer": {}}',
                                    '{"version": 1, "step": 2, "optimizer": {"scalars": []}}'])
def test_a_malformed_trainer_record_is_an_unreadable_checkpoint(ndac_run, tmp_path, record):
    """[] failed as "unexpected AttributeError", {} as KeyError 'optimizer', a string version as int()'s
    ValueError: none named the checkpoint."""
    import shutil

    ckpt = tmp_path / "step-00000002"
    shutil.copytree(ndac_run.run_dir / "checkpoints" / "step-00000002", ckpt)
    (ckpt / "trainer.json").write_text(record)
    with pytest.raises(TrainingError, match=f"{re.escape(str(ckpt))}: unreadable checkpoint"):
        load_checkpoint(ckpt)


def test_a_revival_between_logged_steps_is_logged(clips, tmp_path):
    """Only a revival that fell on a logged step was logged: with a revival every 3 steps and a log every
    2, the 63 codes moved at step 3 appeared in no row."""
    cfg = _ndac(clips, tmp_path / "run", optim=dict(revive_dead_codes_every=3), train=dict(max_steps=4, log_every=2))
    t = NDACTrainer(cfg, device="cpu", quiet=True)
    t.run()
    assert [h["step"] for h in t.history] == [2, 4]
    assert t.history[0]["revived_codes"] == 0 and t.history[1]["revived_codes"] > 0


def test_resume_keeps_the_revival_counts(clips, tmp_path):
    """The counts of which entries were chosen since the last revival were not saved: a run resumed between
    two revivals started them at zero and revived entries an uninterrupted run keeps (weights 3.0 apart)."""
    settings = dict(optim=dict(revive_dead_codes_every=4), train=dict(max_steps=6, checkpoint_every=3))
    whole = NDACTrainer(_ndac(clips, tmp_path / "whole", **settings), device="cpu", quiet=True)
    whole.run()
    resumed = NDACTrainer(_ndac(clips, tmp_path / "resumed", **settings), device="cpu", quiet=True,
                          resume=str(tmp_path / "whole" / "checkpoints" / "step-00000003"))
    resumed.run()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def test_resume_applies_the_optimiser_settings_it_reports_as_changed(ndac_run, pair_list, clips, tmp_path, capsys):
    """A resume said "optim.betas [0.8, 0.99] -> [0.5, 0.9]" (and eps, weight decay, lr_gamma, lr) while the
    optimiser kept the checkpoint's, which load_state_dict had put back."""
    src = ndac_run.run_dir / "checkpoints" / "step-00000002"
    optim = dict(betas=[0.5, 0.9], eps=1e-3, weight_decay=0.0, lr_gamma=0.5, lr=2e-3)
    t = NDACTrainer(_ndac(clips, tmp_path / "n", optim=optim), device="cpu", resume=str(src))
    t.run()
    assert "optim.betas [0.8, 0.99] -> [0.5, 0.9]" in capsys.readouterr().err
    group = t.optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.5, 0.9), 1e-3, 0.0)
    assert t.scheduler.gamma == 0.5 and group["lr"] == pytest.approx(2e-3 * 0.5 ** 2)  # two steps from the new rate
    run = tmp_path / "pf"
    PostfilterTrainer(_pf(pair_list, run, train=dict(max_steps=2, checkpoint_every=2)), device="cpu", quiet=True).run()
    pf = PostfilterTrainer(_pf(pair_list, run, optim=dict(weight_decay=0.1, betas=[0.5, 0.9]), train=dict(max_steps=3)),
                           device="cpu", quiet=True, resume=True)
    pf.run()
    group = pf.optimizer.param_groups[0]
    assert (group["betas"], group["weight_decay"]) == ((0.5, 0.9), 0.1)


def test_a_signal_during_a_step_lands_after_it(clips, tmp_path, monkeypatch):
    """A Ctrl-C that arrived after the optimiser's update but before the step was counted saved a
    checkpoint one step behind its weights (Adam's count 3, the record's 2): resumed, the run took a step
    twice. A signal inside a step is now delivered when the step is whole."""

    t = NDACTrainer(_ndac(clips, tmp_path / "run", train=dict(max_steps=5)), device="cpu", quiet=True)
    real_step, calls = torch.optim.AdamW.step, []

    def step_then_signal(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the moment the update is done
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_signal)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, not a background job
    try:
        with pytest.raises(KeyboardInterrupt):
            t.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    ckpt = load_checkpoint(tmp_path / "run")
    adam_steps = {float(st["step"]) for st in ckpt["optimizer"]["state"].values()}
    assert ckpt["trainer"]["step"] == 3 and adam_steps == {3.0}


def test_a_trainer_kept_to_the_end_of_a_script_lets_it_exit(clips, tmp_path):
    """With loader workers (which ignore stop signals), a script whose trainer was still referenced at
    exit hung forever: Python's exit sends its daemon children SIGTERM and waits for them."""
    import subprocess
    import sys

    script = f"""
from flowdec_cli.training.config import config_from_dict
from flowdec_cli.training.ndac_trainer import NDACTrainer
from tests.test_training_helpers import ndac_dict
trainer = NDACTrainer(config_from_dict("ndac", ndac_dict([{str(clips)!r}], {str(tmp_path / "run")!r},
                      data=dict(num_workers=1), train=dict(max_steps=1))), device="cpu", quiet=True)
trainer.run()
"""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
