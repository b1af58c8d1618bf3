"""MetricLogger: metrics.jsonl, TensorBoard scalars, plain and TTY progress."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ct_core.train.metric_logger import MetricLogger, format_duration


def test_jsonl_and_tensorboard_hold_what_was_logged(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, total_steps=100, stream=io.StringIO()) as logger:
        logger.log(10, {"loss": 2.5, "lr": torch.tensor(1e-3), "tokens": 4096})
        logger.log(10, {"bpc": 1.25, "nll": math.nan}, split="valid")
        logger.log(20, {"loss": 2.0})
        assert logger.writer is not None
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [(10, "train"), (10, "valid"), (20, "train")]
    assert lines[0]["loss"] == 2.5 and abs(lines[0]["lr"] - 1e-3) < 1e-9 and lines[0]["tokens"] == 4096
    assert lines[1]["bpc"] == 1.25 and lines[1]["nll"] is None  # NaN is not JSON
    assert all(isinstance(r["time"], float) for r in lines)

    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/tokens", "valid/bpc", "valid/nll"} <= set(acc.Tags()["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(10, 2.5), (20, 2.0)]


def test_jsonl_appends_across_runs(tmp_path: Path) -> None:
    for step in (1, 2):
        with MetricLogger(tmp_path, total_steps=2, stream=io.StringIO()) as logger:
            logger.log(step, {"loss": float(step)})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # a resumed run continues the same file


def test_plain_progress_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    logger = MetricLogger(None, total_steps=25, log_every=10, stream=out)
    for step in range(1, 26):
        logger.progress(step, loss=3.0 / step, tokens_per_s=None if step < 20 else 12345.6)
    logger.message("evaluating")
    logger.close()
    lines = out.getvalue().splitlines()
    pattern = r"step (\d+)/25 \| loss \d+\.\d{3}( \| 12,346 tok/s)? \| eta (\d+s|\d+m\d\ds|\?)"
    matches = [re.fullmatch(pattern, line) for line in lines[:-1]]
    assert [(m.group(1), bool(m.group(2))) for m in matches] == [("10", False), ("20", True), ("25", True)]
    assert lines[-1] == "evaluating"
    assert "\r" not in out.getvalue()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_progress_bar() -> None:
    out = FakeTerminal()
    logger = MetricLogger(None, total_steps=5, stream=out)
    for step in range(1, 6):
        logger.progress(step, loss=1.5, tokens_per_s=100.0)
    logger.message("a line above the bar")
    logger.close()
    text = out.getvalue()
    assert "\r" in text and "5/5" in text and "loss 1.500" in text
    assert "a line above the bar" in text
    assert not re.search(r"^step \d+/5 \|", text, re.M)


def test_disabled_logger_does_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    logger = MetricLogger(tmp_path / "run", total_steps=10, enabled=False, stream=out)
    logger.log(1, {"loss": 1.0})
    logger.progress(10, loss=1.0, tokens_per_s=1.0)
    logger.message("hidden")
    logger.close()
    assert logger.writer is None and out.getvalue() == "" and not (tmp_path / "run").exists()


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 192, 7500)] == ["5s", "3m12s", "2h05m"]
