"""scripts/corpus_tools.py: growing a source's training share leaves the validation split as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import load_script, tone

PACKAGE = "abe-data"  # any package the script knows a licence for; the files below are made up


@pytest.fixture(scope="module")
def tools():
    yield from load_script("corpus_tools")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """An extracted package of 120 files: 4.5 s ones (cut as windows) and 1.2 s ones (joined)."""
    root = tmp_path_factory.mktemp("corpus")
    base = root / "_build" / "ext" / PACKAGE / "sounds"
    base.mkdir(parents=True)
    for i in range(120):
        seconds = 1.2 if i % 3 == 0 else 4.5
        sf.write(base / f"f{i:03d}.wav", 0.3 * tone(seconds, 48000, seed=i), 48000, subtype="PCM_16")
    return root


def _build(tools, root: Path, name: str, cap_min: float, more_train_min: float = 0.0) -> dict[str, dict]:
    src = tools.Source(name, PACKAGE, "sounds", r"sounds/.*\.wav$", cap_min, more_train_min=more_train_min)
    rows, _ = tools.build_source((str(root), src))
    out = {}
    for row in rows:
        rel = row["path"].replace(f"/{name}/", "/SRC/")
        out[rel] = {**row, "bytes": (root / row["path"]).read_bytes()}
    return out


def _split(rows: dict[str, dict], split: str) -> dict[str, dict]:
    return {k: v for k, v in rows.items() if v["split"] == split}


def test_more_training_minutes_keep_validation_byte_identical(tools, root):
    before = _build(tools, root, "v1", cap_min=4)
    after = _build(tools, root, "v2", cap_min=4, more_train_min=2)
    valid = _split(before, "valid")
    assert valid and sum(float(r["duration_s"]) for r in valid.values()) >= 12 - 4.5  # its 5 % share filled
    assert {k: (v["bytes"], v["source"]) for k, v in _split(after, "valid").items()} == {
        k: (v["bytes"], v["source"]) for k, v in valid.items()}
    train_before, train_after = _split(before, "train"), _split(after, "train")
    minutes = sum(float(r["duration_s"]) for r in train_after.values()) / 60
    assert set(train_before) < set(train_after) and 5.5 < minutes <= 5.8 + 0.2
    changed = [k for k in train_before if train_after[k]["bytes"] != train_before[k]["bytes"]]
    assert all("concat_" in k for k in changed) and len(changed) <= 1  # only where v1's cap cut a join short


def test_a_source_with_only_training_minutes_has_no_validation_files(tools, root):
    rows = _build(tools, root, "new", cap_min=0, more_train_min=2)
    assert rows and not _split(rows, "valid")
    assert 1.9 < sum(float(r["duration_s"]) for r in rows.values()) / 60 <= 2.2
