"""scripts/eval_tables.py: the docs' evaluation tables from evaluate_default_model.py's JSON."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def eval_tables():
    yield from load_script("eval_tables")


def _run(visqol_nfe6: list[float], clips: list[str]) -> dict:
    rows = {
        "flowdec 7.5 kbit/s, NFE 0": [3.0, 3.2],
        "flowdec 7.5 kbit/s, NFE 6": visqol_nfe6,
        "flowdec 7.5 kbit/s, NFE 0, no side channel": [2.5, 2.7],
        "Opus 6 kbit/s": [2.0, 2.2],
    }
    table, per_clip = [], []
    for system, scores in rows.items():
        table.append({"category": "music", "system": system, "clips": len(scores),
                      "visqol": sum(scores) / len(scores), "mel": 0.2, "kbps_actual": 7.7})
        per_clip.append({"category": "music", "system": system, "scores": [{"visqol": v} for v in scores]})
    return {"nfe": [0, 6], "clips": {"music": clips}, "table": table, "per_clip": per_clip}


def test_table_marks_the_default_and_the_bare_codec(eval_tables):
    text = eval_tables.table(_run([3.1, 3.5], ["/a/x.flac", "/a/y.flac"]), temperature=0.25)
    lines = text.splitlines()
    assert lines[0].startswith("| category | system | clips | ViSQOL | mel dist. |")
    assert "| music | flowdec 7.5 kbit/s, NFE 0 | 2 | 3.10 | 0.200 |" in text
    assert "| music | **flowdec 7.5 kbit/s, NFE 6, T 0.25** | 2 | 3.30 |" in text
    assert "| music | *codec alone, 7.5 kbit/s, NFE 0, no side channel* | 2 | 2.60 |" in text
    assert all(line.count("|") == lines[0].count("|") for line in lines)  # empty cells for absent metrics


def test_comparison_counts_clips_and_refuses_other_clips(eval_tables, tmp_path, capsys):
    old, new = _run([3.1, 3.5], ["/a/x.flac", "/a/y.flac"]), _run([3.4, 3.3], ["/b/x.flac", "/b/y.flac"])
    text = eval_tables.comparison(new, old)
    assert "| music | flowdec 7.5 kbit/s, NFE 6 | 3.30 -> 3.35 |" in text and "1 up, 1 down" in text
    assert "Opus" not in text
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "other.json").write_text(json.dumps(_run([3.0, 3.0], ["/a/x.flac", "/a/z.flac"])))
    with pytest.raises(SystemExit, match="different clips"):
        eval_tables.main([str(tmp_path / "other.json"), "--against", str(tmp_path / "old.json")])
    eval_tables.main([str(tmp_path / "old.json")])
    assert "**flowdec 7.5 kbit/s, NFE 6**" in capsys.readouterr().out
