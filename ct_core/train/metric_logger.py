"""Training metrics: ``metrics.jsonl``, TensorBoard scalars and a progress display.

Every :meth:`MetricLogger.log` call appends one JSON object per line to
``<run_dir>/metrics.jsonl`` (easy to read with ``pandas.read_json(...,
lines=True)``; non-finite values are written as ``null``) and writes the same
values as TensorBoard scalars ``<split>/<name>`` under ``<run_dir>/tb``.

Progress goes to stderr: a tqdm bar on a terminal; elsewhere (CI, cluster
logs) one plain line every ``log_every`` steps::

    step 120/1000 | loss 2.314 | 12,345 tok/s | eta 3m12s

On ranks other than 0, build it with ``enabled=False``: every method is then
a no-op and :attr:`MetricLogger.writer` is ``None``.

Example::

    with MetricLogger(run_dir, total_steps=1000) as logger:
        logger.progress(step, loss=2.31, tokens_per_s=12345.0)
        logger.log(step, {"loss": 2.31, "lr": 3e-4})
        logger.log(step, {"bpc": 1.05}, split="valid")
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, TextIO

from tqdm import tqdm

from ct_core.data.frontend import SampleMedia


def format_duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _number(value: Any) -> Any:
    """A Python number from a metric (tensors and numpy scalars via item())."""
    return value.item() if hasattr(value, "item") else value


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl row; infinity for a damaged line."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float, in nested dicts and lists too,
    made None: JSON has no NaN or infinity (TensorBoard still shows them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class MetricLogger:
    """Metrics file, TensorBoard writer and progress display of one run.

    ``run_dir=None`` logs progress only (no files).
    """

    def __init__(
        self,
        run_dir: Path | None,
        total_steps: int,
        enabled: bool = True,
        log_every: int = 10,
        stream: TextIO | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.stream = stream if stream is not None else sys.stderr
        self.writer: Any = None  # torch.utils.tensorboard.SummaryWriter
        self._jsonl: TextIO | None = None
        self._run_dir: Path | None = None
        self._bar: tqdm | None = None
        self._first: tuple[int, float] | None = None  # (step, time) of the first progress call
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._loss = math.nan  # the last loss shown
        if not enabled or run_dir is None:
            return
        self._run_dir = Path(run_dir)
        self._run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self._run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._open_writer()

    def _open_writer(self, purge_step: int | None = None) -> None:
        # Imported here: tensorboard is slow to import and only rank 0 needs it.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self._run_dir / "tb"), flush_secs=30, purge_step=purge_step)

    def truncate_after(self, step: int) -> None:
        """Forget what was logged after ``step``: a run resumed from a
        checkpoint of that step logs the later steps again, and each must
        appear once. Rows of ``metrics.jsonl`` with a larger step (and a
        line cut short by a killed process) are dropped; TensorBoard hides
        its events past ``step``."""
        if self._jsonl is None or self._run_dir is None:
            return
        path = self._run_dir / "metrics.jsonl"
        self._jsonl.close()
        kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.endswith("\n") and _step_of(line) <= step]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        self._jsonl = open(path, "a", encoding="utf-8")
        if self.writer is not None:
            self.writer.close()
            self._open_writer(purge_step=step + 1)

    def log(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        """Record ``metrics`` of ``split`` at ``step`` in both sinks."""
        if not self.enabled:
            return
        values = {name: _number(value) for name, value in metrics.items()}
        if self._jsonl is not None:
            record = {"step": step, "split": split, "time": round(time.time(), 3)}
            record.update({name: json_safe(value) for name, value in values.items()})
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()  # a crashed run keeps every line it logged
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", float(value), step)

    def log_media(self, step: int, media: SampleMedia) -> None:
        """Write a front end's rendered samples to TensorBoard."""
        if self.writer is None:
            return
        for tag, text in media.texts.items():
            self.writer.add_text(tag, text, step)
        for tag, (wave, rate) in media.audio.items():
            self.writer.add_audio(tag, wave[None, :], step, sample_rate=rate)
        for tag, image in media.images.items():
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def progress(self, step: int, loss: float | None, tokens_per_s: float | None) -> None:
        """Show training progress after optimizer step ``step`` (1-based);
        ``loss`` and ``tokens_per_s`` may be ``None`` between measurements
        (the last ones stay shown: reading a loss from the GPU every step
        would wait for it)."""
        if not self.enabled:
            return
        self._loss = self._loss if loss is None else loss
        loss = self._loss
        speed = "" if tokens_per_s is None else f" | {tokens_per_s:,.0f} tok/s"
        now = time.monotonic()
        if self._first is None:
            self._first = (step - 1, now)  # rate and ETA count from where this process started
        if self._tty:
            if self._bar is None:
                self._bar = tqdm(
                    total=self.total_steps, initial=step - 1, file=self.stream, unit="step", dynamic_ncols=True
                )
            self._bar.set_postfix_str(f"loss {loss:.3f}{speed}", refresh=False)
            self._bar.update(step - self._bar.n)
            return
        if step % self.log_every != 0 and step != self.total_steps:
            return
        first_step, first_time = self._first
        done = step - first_step
        eta = (self.total_steps - step) * (now - first_time) / done if done > 0 else math.nan
        eta_text = format_duration(eta) if math.isfinite(eta) else "?"
        self.message(f"step {step}/{self.total_steps} | loss {loss:.3f}{speed} | eta {eta_text}")

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.writer is not None:
            self.writer.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

