"""Every Python snippet in README.md and docs/*.md runs as written.

Each runs in a fresh working folder set up as a reader following the docs would have it: the repository's
``configs/`` beside it and a few seconds of generated audio in ``data/train`` (nothing is downloaded).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from .conftest import tone

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SLOW = {"training.md"}  # trains a tiny codec for a few steps


def _snippets() -> list:
    out = []
    for doc in DOCS:
        for i, m in enumerate(re.finditer(r"^```python\n(.*?)^```", doc.read_text(), re.S | re.M)):
            marks = [pytest.mark.slow] if doc.name in SLOW else []
            out.append(pytest.param(doc, m.group(1), id=f"{doc.name}-{i}", marks=marks))
    return out


SNIPPETS = _snippets()


def test_the_docs_have_snippets():
    assert {p.values[0].name for p in SNIPPETS} >= {"README.md", "evaluation.md", "training.md"}


@pytest.mark.parametrize("doc, code", SNIPPETS)
def test_snippet_runs_as_written(doc, code, tmp_path, monkeypatch):
    if "flowdec_cli.corpus" in code:  # Parquet shards: pyarrow comes with the [ray] extra, not the core install
        pytest.importorskip("pyarrow")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "data" / "train").mkdir(parents=True)
    for i in range(4):
        sf.write(tmp_path / "data" / "train" / f"clip{i}.wav", tone(1.5, 48000, seed=i), 48000)
    exec(compile(code, f"{doc.name} snippet", "exec"), {"__name__": "__snippet__"})


def test_the_readme_lists_the_extensions_a_folder_takes():
    from flowdec_cli.audio import AUDIO_EXTENSIONS

    text = " ".join((ROOT / "README.md").read_text().split())
    listed = re.search(r"audio files by extension: ([a-z0-9, ]+);", text)
    assert listed is not None
    assert ["." + e.strip() for e in listed.group(1).split(",")] == list(AUDIO_EXTENSIONS)
