"""Tiny training configs, generated audio and CPU settings shared by the tests/test_training_*.py modules
(no tests of its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from .conftest import tone

TINY_NDAC_MODEL = dict(encoder_dim=4, encoder_rates=[2, 4, 5, 8], latent_dim=8, decoder_dim=16,
                       decoder_rates=[8, 5, 4, 2], n_codebooks=3, codebook_size=32, codebook_dim=4,
                       quantizer_dropout=0.5, sample_rate=48000)


def write_clips(folder: Path, n: int, seconds: float = 0.3, rates=(48000, 44100), seed: int = 0) -> list[Path]:
    """``n`` short speech-like clips at alternating rates and channel counts."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        sr = rates[i % len(rates)]
        ch = 1 + i % 2
        p = folder / f"clip{i:02d}.wav"
        sf.write(p, tone(seconds, sr, ch, seed=seed + i) * (0.5 + 0.1 * i), sr, subtype="FLOAT")
        paths.append(p)
    return paths


def ndac_dict(sources: list[str], out_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "model": dict(TINY_NDAC_MODEL),
        "data": dict(train=sources, validation_fraction=0.0, segment_seconds=0.1, batch_size=2, num_workers=0,
                     gain_db=[-3.0, 3.0]),
        "loss": dict(cqt_bins_per_octave=[8]),
        "optim": dict(lr=1e-3),
        "train": dict(max_steps=4, log_every=1, val_every=0, checkpoint_every=0, out_dir=str(out_dir),
                      progress=False, tensorboard=False),
        "validation": dict(max_files=2, max_seconds=0.2),
    }
    for name, values in sections.items():
        d.setdefault(name, {}).update(values)
    return d


def postfilter_dict(pair_lists: list[str], out_dir: Path, val_lists: list[str] | None = None,
                    **sections: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "model": dict(nf=4, ch_mult=[1, 1], pad_multiple=8),
        "data": dict(train=pair_lists, validation=val_lists or [], segment_seconds=0.08, batch_size=2, num_workers=0),
        "optim": dict(lr=1e-3, ema_decay=0.9),
        "train": dict(max_steps=4, log_every=1, val_every=0, checkpoint_every=0, out_dir=str(out_dir),
                      progress=False, tensorboard=False),
        "validation": dict(num_files=1, nfe=[2], max_seconds=0.1),
    }
    for name, values in sections.items():
        d.setdefault(name, {}).update(values)
    return d


def write_pairs_files(folder: Path, n: int, seconds: float = 0.3, noise: float = 0.05, seed: int = 0
                      ) -> tuple[Path, list[tuple[Path, Path]]]:
    """(pair list, pairs): clean clips and 'coded' versions (clean + a little noise, a bit longer)."""
    rng = np.random.default_rng(seed)
    clean_dir, coded_dir = folder / "clean", folder / "coded"
    clean_dir.mkdir(parents=True, exist_ok=True)
    coded_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        x = tone(seconds, 48000, 1, seed=seed + i)[:, 0] * 0.5
        y = np.concatenate([x + noise * rng.standard_normal(len(x)).astype(np.float32), np.zeros(100, np.float32)])
        a, b = clean_dir / f"c{i}.wav", coded_dir / f"c{i}.wav"
        sf.write(a, x, 48000, subtype="FLOAT")
        sf.write(b, y, 48000, subtype="FLOAT")
        pairs.append((a, b))
    lst = folder / "pairs.txt"
    lst.write_text("".join(f"{a},{b}\n" for a, b in pairs))
    return lst, pairs


class fast_cpu_settings:
    """One thread and no oneDNN: for the tiny test models, thread synchronisation and oneDNN's per-shape
    setup cost far more than the arithmetic (a training step drops from ~0.3 s to ~0.05 s)."""

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads(), torch.backends.mkldnn.enabled
        torch.set_num_threads(1)
        torch.backends.mkldnn.enabled = False

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.saved[0])
        torch.backends.mkldnn.enabled = self.saved[1]


@pytest.fixture()
def fast_cpu():
    with fast_cpu_settings():
        yield


def test_a_sigma_file_is_a_file_and_is_not_clobbered(tmp_path):
    from flowdec_cli.training import write_sigma_file
    from flowdec_cli.training.common import TrainingError

    est = {"sigma_y_perband": [0.5] * 768, "sigma_y": 0.5, "beta": 0.3}
    with pytest.raises(TrainingError, match="not a folder"):
        write_sigma_file(tmp_path, est)
    write_sigma_file(tmp_path / "s.json", est)
    (tmp_path / "s.json").unlink()  # the JSON is free, the curve's name beside it is not
    (tmp_path / "s_perband.npy").write_bytes(b"keep")
    from flowdec_cli.fileio import OutputExistsError

    with pytest.raises(OutputExistsError, match=r"s_perband\.npy: exists; use overwrite=True"):
        write_sigma_file(tmp_path / "s.json", est, overwrite=False)
    assert (tmp_path / "s_perband.npy").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_perband.npy"]  # nothing else, no temporary


def test_sigma_estimates_are_finite_or_refused(tmp_path):
    """A NaN beta or sigma_y trains a postfilter of NaN weights with loss 0; it, or a value the trainer cannot
    divide by, is refused where it is written and where it is read, and settings that make one are refused
    before any work."""
    from flowdec_cli.training import estimate_sigma, write_sigma_file
    from flowdec_cli.training.common import TrainingError
    from flowdec_cli.training.config import config_from_dict
    from flowdec_cli.training.postfilter_trainer import sigma_y_from_config

    pairs = [("clean.wav", "coded.wav")]  # not read: the settings are refused first
    for kwargs, why in (({"n_fft": 7}, "even n_fft"), ({"hop": 0}, "hop from 1"), ({"n_fft": 64, "hop": 100}, "hop"),
                        ({"alpha": float("nan")}, "alpha nan"), ({"qx": 0.0}, "q_x 0.0"),
                        ({"n_fft": 100_000_000}, "n_fft 100000000: at most 191998")):  # was torch's padding error
        with pytest.raises(TrainingError, match=why):
            estimate_sigma(pairs, **kwargs)
    good = {"type": "flowdec_sigma_estimate", "sigma_y_perband": [0.5] * 768, "sigma_y": 0.5, "beta": 0.3}
    for field, value in (("beta", float("nan")), ("sigma_y", float("inf")), ("sigma_y", 0.0), ("beta", -0.3)):
        with pytest.raises(TrainingError, match=f"{field} came out as NaN, infinite, zero or negative"):
            write_sigma_file(tmp_path / "s.json", {**good, field: value})
    assert not list(tmp_path.iterdir())
    cfg = config_from_dict("postfilter", {"sigma": {"mode": "perband", "file": str(tmp_path / "s.json"),
                                                     "beta_from_file": True}})
    import json

    for bad, why in (({"beta": None}, "beta is None"), ({"sigma_y_perband": [0.5] * 767 + [float("nan")]},
                                                        r"sigma_y_perband\[767\] is nan")):
        (tmp_path / "s.json").write_text(json.dumps({**good, **bad}))
        with pytest.raises(TrainingError, match=why):
            sigma_y_from_config(cfg)
    (tmp_path / "s.json").write_text(json.dumps(good))
    curve, beta = sigma_y_from_config(cfg)
    assert beta == 0.3 and torch.isfinite(curve).all()


def test_a_sigma_estimate_from_pairs_coded_since_by_another_codec_is_named(tmp_path):
    """sigma_y describes the coded side of the pairs: after prepare-pairs --force re-codes them with new
    codec weights (or another side channel), an estimate made before is stale, and training said nothing."""
    import json

    from flowdec_cli.training.prepare import pairs_coded_by, stale_sigma_warning

    def pairs(name: str, ndac_hash: str, envelope: str = "") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "prepare.json").write_text(json.dumps({"ndac_hash": ndac_hash, "envelope": envelope,
                                                         "n_codebooks": [4, 2]}))
        (folder / "train.txt").write_text("a.wav,b.wav\n")
        return folder / "train.txt"

    first, second = pairs("p1", "aaaa"), pairs("p2", "aaaa")
    hand_made = tmp_path / "hand.txt"
    hand_made.write_text("a.wav,b.wav\n")
    assert pairs_coded_by([first, second, hand_made]) == [{"ndac_hash": "aaaa", "envelope": "", "n_codebooks": [2, 4]}]
    estimate = {"pairs_coded_by": pairs_coded_by([first])}
    assert stale_sigma_warning("s.json", estimate, [first, second]) is None
    assert stale_sigma_warning("s.json", {}, [first]) is None  # an estimate from before the record, or an .npy
    assert stale_sigma_warning("s.json", estimate, [hand_made]) is None  # nothing known about these pairs
    (tmp_path / "p1" / "prepare.json").write_text(json.dumps({"ndac_hash": "bbbb", "envelope": ""}))
    line = stale_sigma_warning("s.json", estimate, [first])
    assert line is not None and "s.json" in line and "coded by aaaa" in line and "now coded by bbbb" in line
    assert "estimate-sigma" in line
    (tmp_path / "p1" / "prepare.json").write_text(json.dumps({"ndac_hash": "aaaa", "envelope": "bands34-21ms",
                                                              "n_codebooks": [4, 2]}))
    line = stale_sigma_warning("s.json", estimate, [first])
    assert line is not None and "aaaa with bands34-21ms at 2,4 codebooks" in line
    (tmp_path / "p1" / "prepare.json").write_text(json.dumps({"ndac_hash": "aaaa", "n_codebooks": [3]}))
    line = stale_sigma_warning("s.json", estimate, [first])  # the same weights at other counts
    assert line is not None and "now coded by aaaa at 3 codebooks" in line
    from flowdec_cli.training import write_sigma_file

    curve = {"type": "flowdec_sigma_estimate", "sigma_y_perband": [0.5] * 768, "sigma_y": 0.5, "beta": 0.3}
    written = json.loads(write_sigma_file(tmp_path / "w.json", curve, pair_lists=[second]).read_text())
    assert written["pairs_coded_by"] == pairs_coded_by([second])  # the library records it, not only the CLI


def test_a_mistyped_run_folder_is_not_taken_for_a_hub_repo(tmp_path):
    from flowdec_cli.training.common import TrainingError
    from flowdec_cli.training.prepare import load_trained_ndac

    with pytest.raises(TrainingError, match="no such file or folder"):
        load_trained_ndac(str(tmp_path / "runs" / "ndac-tiyn"))


def test_a_folder_given_as_a_pair_list_is_named_a_folder(tmp_path):
    from flowdec_cli.training.data import DataError, read_pairs

    with pytest.raises(DataError, match=f"{tmp_path}: is a folder; a pair list is a file"):
        read_pairs([tmp_path])
    with pytest.raises(DataError, match="no such pair list"):
        read_pairs([tmp_path / "absent.txt"])


def test_a_strict_load_error_is_one_bounded_line():
    """A resize of every layer listed all 129 mismatched weights in one 10,000-character line (the codec's
    was cut mid-word at 200)."""
    from flowdec_cli.checkpoints import state_mismatch
    from flowdec_cli.training.common import first_problem

    own = {f"layer{i}.weight": torch.zeros(16, 4) for i in range(30)}
    theirs = {f"layer{i}.weight": torch.zeros(8, 4) for i in range(30)}
    problem = state_mismatch(own, theirs, "ckpt", "postfilter")
    assert problem is not None and problem.startswith("ckpt: weights do not fit the postfilter (30 problems): ")
    assert problem.endswith("; and 22 more") and len(problem) < 800
    assert state_mismatch(own, dict(own), "ckpt", "postfilter") is None
    assert first_problem(ValueError(problem)) == "shape of layer0.weight: file [8, 4], model [16, 4] (and 29 more)"


def test_memory_running_out_is_one_line_not_a_bug_report():
    from flowdec_cli.errors import one_line_message

    assert one_line_message(MemoryError("Unable to allocate 171. PiB")) == "out of memory (Unable to allocate 171. PiB)"
    assert one_line_message(MemoryError()) == "out of memory"


def test_every_folder_mode_lists_the_same_audio_files(tmp_path):
    """Five places decided which files of a folder are audio; training and entropy tables took hidden files
    (macOS's ._x.wav AppleDouble files, which are not audio, failed a run). Corpus encode, eval, training
    lists (entropy tables read theirs) now list a folder by one rule."""
    from flowdec_cli.audio import audio_files_below
    from flowdec_cli.corpus import list_inputs
    from flowdec_cli.evaluation.pairing import find_audio
    from flowdec_cli.training.data import list_audio

    root = tmp_path / "set"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ("a.wav", "sub/B.FLAC", ".hidden/c.wav"):
        sf.write(root / rel, tone(0.1, 16000), 16000)
    (root / "._a.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "notes.txt").write_text("not audio")
    (root / "loop").symlink_to(root, target_is_directory=True)
    expected = [root / "a.wav", root / "sub" / "B.FLAC"]
    assert audio_files_below(root) == expected
    assert [Path(i.path) for i in list_inputs(root)] == expected
    assert find_audio(root) == expected
    assert [Path(i.path) for i in list_audio([root])] == [p.resolve() for p in expected]
    assert audio_files_below(root, pattern="sub/*") == [root / "sub" / "B.FLAC"]
    assert audio_files_below(root, exclude=root / "sub") == [root / "a.wav"]


def test_a_file_list_from_a_pipe_and_a_hash_inside_a_name(tmp_path):
    """A list read from a pipe (`<(find ...)`) was taken for a missing file, and a `#` inside a name cut the
    path short; only a line starting with `#` is a comment."""
    import os
    import threading

    from flowdec_cli.training.data import list_audio

    sharp = tmp_path / "Symphony #5.wav"
    sf.write(sharp, tone(0.1, 16000), 16000)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n  # another\n{sharp}\n")
    assert [i.path for i in list_audio([listing])] == [str(sharp.resolve())]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(f"{sharp}\n"))
    writer.start()
    try:
        assert [i.path for i in list_audio([fifo])] == [str(sharp.resolve())]
    finally:
        writer.join(timeout=10)
