"""Results of a check that runs row by row, kept as each row finishes: one
JSON line per row appended to ``<stem>.jsonl`` (flushed and synced), and
the Markdown report ``<stem>.md`` regenerated from those lines, so that a
timeout, a crash or a kill in a later row loses nothing measured before it.

Example::

    results = CheckResults(out_dir / "gpu_nvidia-h200_20270101", "GPU check", header)
    results.add(RowResult("gemm_peak", "ok", 9.1, 10, "812 TFLOP/s", {"tflops": 812.0}))
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.report import markdown_table
from ct_core.train.metric_logger import json_safe

#: What a row ended as: passed, a check failed, it raised, or it did not run.
STATUSES = ("ok", "FAILED", "error", "skipped")


@dataclass
class RowResult:
    row: str
    status: str  # one of STATUSES
    seconds: float  # wall clock of the row
    estimate_s: float  # what the row was expected to take on this device
    summary: str  # one line for the report's table
    values: dict[str, Any] = field(default_factory=dict)  # the numbers, for reading by programs
    error: str | None = None  # the exception, one line, when status is "error"
    traceback: str | None = None


class CheckResults:
    """``<stem>.jsonl`` and ``<stem>.md``, rewritten after every row.

    ``header`` are the report's opening lines (environment); ``describe``
    maps a row's name to what it checks, for the table."""

    def __init__(self, stem: Path, title: str, header: list[str], describe: dict[str, str]) -> None:
        self.jsonl, self.markdown = stem.with_suffix(".jsonl"), stem.with_suffix(".md")
        self.title, self.header, self.describe = title, header, describe
        self.rows: list[RowResult] = []
        self.notes: list[str] = []
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.jsonl.write_text("")  # a rerun today starts its own report
        self.write_markdown()

    def add(self, result: RowResult) -> None:
        """Record ``result`` on disk at once (the JSON line synced, then the report)."""
        self.rows.append(result)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(asdict(result))) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.write_markdown()

    def note(self, line: str) -> None:
        self.notes.append(line)
        self.write_markdown()

    def write_markdown(self) -> None:
        table = [[r.row, self.describe.get(r.row, ""), r.status if r.status != "FAILED" else "**FAILED**",
                  r.summary.replace("|", "\\|"), f"{r.seconds:.0f} ({r.estimate_s:.0f})"] for r in self.rows]
        errors = [f"- `{r.row}`: {r.error}" for r in self.rows if r.error]
        bad = [r.row for r in self.rows if r.status in ("FAILED", "error")]
        total = sum(r.seconds for r in self.rows)
        verdict = (f"**{len(bad)} row(s) failed**: {', '.join(bad)}." if bad
                   else "Every row that ran passed." if self.rows else "No row has finished yet.")
        lines = [f"# {self.title}", "", *self.header, "",
                 *markdown_table(["row", "checks", "status", "result", "seconds (estimate)"], table), "",
                 *(["Errors (tracebacks in the .jsonl file):", "", *errors, ""] if errors else []),
                 *self.notes, *([""] if self.notes else []),
                 f"Rows so far: {len(self.rows)}, {total:.0f} s. {verdict}", ""]
        tmp = self.markdown.with_name(f".{self.markdown.name}.tmp")
        tmp.write_text("\n".join(lines), encoding="utf-8")
        os.replace(tmp, self.markdown)

    @property
    def failed(self) -> int:
        return sum(r.status in ("FAILED", "error") for r in self.rows)
