#!/usr/bin/env python3
"""Markdown tables for docs/models.md from the JSON that scripts/evaluate_default_model.py writes.

    python scripts/eval_tables.py docs/default-model-eval.json --temperature 0.25
    python scripts/eval_tables.py NEW.json --against OLD.json

The first form prints the table as docs/models.md shows it: two decimals (three for the mel distance and
the coherence), the default rows (the highest NFE scored) in bold, the codec alone without its side channel
in italics. ``--against`` prints, for every system both runs scored, each metric as ``old -> new``, and for
the default rows how many clips rose and fell in ViSQOL, which a mean can hide. Both runs must have scored
the same clips for that count; the script checks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

COLUMNS = [  # (JSON key, heading, decimals)
    ("visqol", "ViSQOL", 2), ("mel", "mel dist.", 3), ("si_sdr", "SI-SDR (dB)", 2),
    ("hf_ratio", ">8 kHz energy", 2), ("coherence", "coherence", 3), ("pesq", "PESQ-WB", 2),
    ("stoi", "STOI", 2), ("kbps_actual", "kbit/s on disk", 2),
]
_BARE = re.compile(r"flowdec ([\d.]+) kbit/s, NFE 0, no side channel$")
_NFE = re.compile(r"flowdec [\d.]+ kbit/s, NFE (\d+)$")


def default_nfe(run: dict[str, Any]) -> int:
    """The NFE the run scored beside NFE 0: the model's default unless --nfe asked for others."""
    return max(run["nfe"])


def is_default(system: str, nfe: int) -> bool:
    """Whether a row is flowdec at the run's default NFE (> 0): the rows the docs print in bold."""
    scored = _NFE.match(system)
    return scored is not None and nfe > 0 and int(scored.group(1)) == nfe


def label(system: str, nfe: int, temperature: float | None) -> str:
    """A system's name as the docs print it."""
    bare = _BARE.match(system)
    if bare:
        return f"*codec alone, {bare.group(1)} kbit/s, NFE 0, no side channel*"
    if is_default(system, nfe):
        return f"**{system}" + ("" if temperature is None else f", T {temperature:g}") + "**"
    return system


def _cell(row: dict[str, Any], key: str, decimals: int) -> str:
    value = row.get(key)
    return "" if value is None else f"{value:.{decimals}f}"


def table(run: dict[str, Any], temperature: float | None = None) -> str:
    nfe = default_nfe(run)
    lines = ["| category | system | clips | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for row in run["table"]:
        cells = [row["category"], label(row["system"], nfe, temperature), str(row["clips"])]
        cells += [_cell(row, key, decimals) for key, _, decimals in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(new: dict[str, Any], old: dict[str, Any]) -> str:
    if {k: [Path(p).name for p in v] for k, v in new["clips"].items()} != \
            {k: [Path(p).name for p in v] for k, v in old["clips"].items()}:
        raise SystemExit("the two runs scored different clips; compare runs of the same set")
    before = {(r["category"], r["system"]): r for r in old["table"]}
    clips_before = {(r["category"], r["system"]): r["scores"] for r in old["per_clip"]}
    nfe = default_nfe(new)
    lines = ["| category | system | " + " | ".join(h for _, h, _ in COLUMNS[:-1]) + " | ViSQOL per clip |",
             "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for row in new["table"]:
        key = (row["category"], row["system"])
        if key not in before or row["system"].startswith("Opus"):
            continue  # Opus does not change between runs of the same clips
        cells = [f"{_cell(before[key], k, d)} -> {_cell(row, k, d)}" if row.get(k) is not None else ""
                 for k, _, d in COLUMNS[:-1]]
        moved = ""
        if is_default(row["system"], nfe):
            now = next(r["scores"] for r in new["per_clip"] if (r["category"], r["system"]) == key)
            deltas = [a["visqol"] - b["visqol"] for a, b in zip(now, clips_before[key])]
            moved = f"{sum(d > 0 for d in deltas)} up, {sum(d < 0 for d in deltas)} down"
        lines.append(f"| {row['category']} | {row['system']} | " + " | ".join(cells) + f" | {moved} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="JSON of scripts/evaluate_default_model.py --json")
    ap.add_argument("--against", type=Path, help="an earlier run's JSON: print old -> new instead")
    ap.add_argument("--temperature", type=float, help="name the default rows' start-noise temperature")
    args = ap.parse_args(argv)
    run = json.loads(args.run.read_text())
    text = comparison(run, json.loads(args.against.read_text())) if args.against else table(run, args.temperature)
    try:
        print(text)
    except BrokenPipeError:  # `| head`: stop quietly
        sys.stderr.close()


if __name__ == "__main__":
    main()
