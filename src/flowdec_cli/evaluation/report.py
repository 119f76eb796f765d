"""Evaluation reports: per-file rows plus a mean row, rendered as a table, JSON or CSV.

A :class:`Report` is a list of rows with named columns: some label columns (strings, e.g.
``file``) followed by value columns (floats; NaN means "could not be computed"). The mean row
averages each value column over the rows where it is finite (NaN rows are skipped) and says
how many rows went into it in ``n``.

Formats:

* table: fixed-width text for the terminal, values with 3 decimals, ``-`` for NaN, a rule
  before the mean row (a mean over fewer rows than the row's ``n`` shows its count in brackets), and a
  legend line saying which metrics are better higher or lower.
* JSON: ``{"columns": [...], "rows": [{...}], "mean": {...}, "n": N, ...extra}``; NaN is
  written as ``null``.
* CSV: a header line and one line per row, nothing else, so that every line is a row of the
  same kind (the mean is in the table and the JSON, and :meth:`mean`); NaN is an empty field.
  Values are written with full precision (``repr`` of the float).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from ..numeric import is_real
from ..streams import strict_json

__all__ = ["Report", "format_value"]


def format_value(v: Any, decimals: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{decimals}f}"
    return str(v)


def _label_text(v: Any) -> str:
    """A label cell: a number as it was given (``2.6``, ``6``), not to three decimals; None as ``-``."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _finite(v: Any) -> bool:
    return is_real(v) and math.isfinite(v)


@dataclass
class Report:
    """Rows of label columns and value columns, with a computed mean row.

    ``labels``: names of the leading label columns (e.g. ``["file"]``; numbers stay numbers in JSON).
    ``values``: names of the numeric columns (e.g. ``["si_sdr", "mel", "lsd"]``).
    ``higher_is_better``: optional direction per value column, used for the table legend.
    ``extra``: additional JSON fields (e.g. unpaired files), not shown in table/CSV.
    A row that is itself a mean over files (``flowdec eval --codec``) may carry ``counts``: ``{value column:
    the files its mean is over}`` for the columns not computed for all of them; the table shows each such
    count in brackets after the value, as for the mean row, and JSON keeps it in the row.
    ``notes``: lines printed under the table (and stored in JSON as ``notes``).
    """

    labels: list[str]
    values: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mean_label: str = "mean"
    with_mean: bool = True  #: False: no mean row/field (rows that are already aggregates)

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def mean(self) -> dict[str, Any]:
        """``{value column: mean over finite entries or NaN}``, ``n`` (number of rows) and ``counts``
        (``{value column: the rows its mean is over}``: fewer than ``n`` where a metric could not be
        computed for some files, so that a mean over 3 of 4 files does not pass for one over all 4)."""
        out: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for col in self.values:
            vals = [float(v) for v in (r.get(col) for r in self.rows) if v is not None and _finite(v)]
            out[col] = sum(vals) / len(vals) if vals else float("nan")
            counts[col] = len(vals)
        out["n"] = len(self.rows)
        out["counts"] = counts
        return out

    # -- renderers ------------------------------------------------------------------------

    def to_table(self) -> str:
        header = self.labels + self.values

        def counted(r: dict[str, Any], c: str) -> str:
            """A value, with the files it is over in brackets where ``r`` says fewer than all."""
            n = r.get("counts", {}).get(c)
            return format_value(r.get(c, "")) + (f" ({n})" if n else "")

        body = [[_label_text(r.get(c, "")) for c in self.labels] + [counted(r, c) for c in self.values]
                for r in self.rows]
        mean = self.mean()
        fewer = {c: k for c, k in mean["counts"].items() if 0 < k < mean["n"]}
        mean_row = [self.mean_label + (f" ({mean['n']})" if len(self.rows) != 1 else "")]
        mean_row += [""] * (len(self.labels) - 1) + [counted({**mean, "counts": fewer}, c) for c in self.values]
        widths = [
            max(len(header[i]), *(len(b[i]) for b in body), len(mean_row[i]))
            for i in range(len(header))
        ]

        def line(cells: list[str]) -> str:
            parts = []
            for i, cell in enumerate(cells):
                left = i < len(self.labels)
                parts.append(cell.ljust(widths[i]) if left else cell.rjust(widths[i]))
            return "  ".join(parts).rstrip()

        rule = "  ".join("-" * w for w in widths)
        lines = [line(header), rule] + [line(b) for b in body]
        if self.with_mean and (len(self.rows) > 1 or not self.rows):
            lines += [rule, line(mean_row)]
        higher = [c for c in self.values if self.higher_is_better.get(c) is True]
        lower = [c for c in self.values if self.higher_is_better.get(c) is False]
        legend = []
        if higher:
            legend.append("higher is better: " + ", ".join(higher))
        if lower:
            legend.append("lower is better: " + ", ".join(lower))
        if legend:
            lines.append("(" + "; ".join(legend) + ")")
        lines += self.notes
        return "\n".join(lines) + "\n"

    def to_json(self, indent: int | None = 2) -> str:
        doc: dict[str, Any] = {
            "columns": self.labels + self.values,
            "rows": list(self.rows),
        }
        if self.with_mean:
            doc["mean"] = self.mean()
        doc["n"] = len(self.rows)
        if self.notes:
            doc["notes"] = list(self.notes)
        doc.update(self.extra)
        return strict_json(doc, indent=indent) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        header = self.labels + self.values
        w.writerow(header)

        def cell(v: Any) -> str:
            if v is None:
                return ""
            if isinstance(v, float):
                return repr(v) if math.isfinite(v) else ""
            return str(v)

        for r in self.rows:
            w.writerow([cell(r.get(c)) for c in header])
        return buf.getvalue()

    def render(self, fmt: str) -> str:
        """``fmt`` is ``"table"``, ``"json"`` or ``"csv"``."""
        if fmt == "json":
            return self.to_json()
        if fmt == "csv":
            return self.to_csv()
        if fmt == "table":
            return self.to_table()
        raise ValueError(f"unknown report format {fmt!r}")
