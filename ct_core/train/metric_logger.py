"""Training metrics: ``metrics.jsonl``, TensorBoard scalars and a progress display.

Every :meth:`MetricLogger.log` call appends one JSON object per line to
``<run_dir>/metrics.jsonl`` (easy to read with ``pandas.read_json(...,
lines=True)``; non-finite values are written as ``null``) and writes the same
values as TensorBoard scalars ``<split>/<name>`` under ``<run_dir>/tb``.

Progress goes to stderr: a tqdm bar on a terminal; elsewhere (CI, cluster
logs) one plain line every ``log_every`` steps::

    step 120/1000 | loss 2.314 | 12,345 tok/s | eta 3m12s

Writes that fail (full disk, file size limit, no permission) are one
:class:`~ct_core.errors.WriteError` line naming the file and the reason. A
row whose append fails is cut off again, so ``metrics.jsonl`` keeps exactly
its earlier rows; rewriting it on resume is atomic.

On ranks other than 0, build it with ``enabled=False``: every method is then
a no-op and :attr:`MetricLogger.writer` is ``None``.

Example::

    with MetricLogger(run_dir, total_steps=1000) as logger:
        logger.progress(step, loss=2.31, tokens_per_s=12345.0)
        logger.log(step, {"loss": 2.31, "lr": 3e-4})
        logger.log(step, {"bpc": 1.05}, split="valid")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

from tqdm import tqdm

from ct_core.atomic_write import FILE_MODE, make_dirs, reason_text, write_failure, write_text
from ct_core.data.frontend import SampleMedia
from ct_core.errors import WriteError

METRICS = "metrics.jsonl"
TENSORBOARD = "tb"


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


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes events in a background thread. When a write fails
    there, the thread would print a traceback, although the same exception
    reaches this thread at the next TensorBoard call, which reports it in
    one line; so that thread's traceback is not printed."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: Any) -> None:
        if type(args.thread).__module__.startswith("tensorboard.") and isinstance(args.exc_value, Exception):
            return
        previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


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
        self._jsonl: int | None = None  # file descriptor of metrics.jsonl, opened for appending
        self._run_dir: Path | None = None
        self._bar: tqdm | None = None
        self._first: tuple[int, float] | None = None  # (step, time) of the first progress call
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._loss = math.nan  # the last loss shown
        if not enabled or run_dir is None:
            return
        self._run_dir = Path(run_dir)
        self._open_jsonl()
        self._open_writer()

    @property
    def _metrics_path(self) -> Path:
        assert self._run_dir is not None
        return self._run_dir / METRICS

    def _open_jsonl(self) -> None:
        path = self._metrics_path
        try:
            make_dirs(path.parent)
            self._jsonl = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        except OSError as err:
            raise (write_failure(err, path, "nothing was written to it") or err) from None

    @contextlib.contextmanager
    def _tensorboard_failures(self) -> Iterator[None]:
        """A failed TensorBoard write as one line naming its events file."""
        try:
            yield
        except Exception as err:
            event_writer = getattr(getattr(self.writer, "file_writer", None), "event_writer", None)
            events = getattr(event_writer, "_file_name", None) or (self._run_dir / TENSORBOARD)  # type: ignore[operator]
            failure = write_failure(err, Path(events), f"{self._metrics_path} holds every row logged")
            if failure is None:
                raise
            raise failure from None

    def _open_writer(self, purge_step: int | None = None) -> None:
        # Imported here: tensorboard is slow to import and only rank 0 needs it.
        from torch.utils.tensorboard import SummaryWriter

        _quiet_tensorboard_thread()
        with self._tensorboard_failures():
            self.writer = SummaryWriter(str(self._run_dir / TENSORBOARD), flush_secs=30, purge_step=purge_step)

    def _append(self, line: str) -> None:
        """Append ``line`` to metrics.jsonl whole, or not at all."""
        assert self._jsonl is not None
        data = line.encode("utf-8")
        start = os.lseek(self._jsonl, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._jsonl, view):]
        except OSError as err:
            try:
                os.ftruncate(self._jsonl, start)
                intact = "its earlier rows are intact"
            except OSError:
                intact = "its earlier rows are intact; a cut-off last line is dropped on resume"
            raise WriteError(f"could not append to {self._metrics_path} "
                             f"({reason_text(err.errno or 0, self._metrics_path)}); {intact}") from None

    def truncate_after(self, step: int) -> None:
        """Forget what was logged after ``step``: a run resumed from a
        checkpoint of that step logs the later steps again, and each must
        appear once. Rows of ``metrics.jsonl`` with a larger step (and a
        line cut short by a killed process) are dropped; TensorBoard hides
        its events past ``step``."""
        if self._jsonl is None or self._run_dir is None:
            return
        path = self._metrics_path
        os.close(self._jsonl)
        self._jsonl = None
        kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.endswith("\n") and _step_of(line) <= step]
        write_text(path, "".join(kept))
        self._open_jsonl()
        if self.writer is not None:
            with self._tensorboard_failures():
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
            self._append(json.dumps(record) + "\n")  # unbuffered: a crashed run keeps every line it logged
        if self.writer is not None:
            with self._tensorboard_failures():
                for name, value in values.items():
                    self.writer.add_scalar(f"{split}/{name}", float(value), step)

    def log_media(self, step: int, media: SampleMedia) -> None:
        """Write a front end's rendered samples to TensorBoard."""
        if self.writer is None:
            return
        with self._tensorboard_failures():
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
        if self._jsonl is not None:
            os.close(self._jsonl)
            self._jsonl = None
        if self.writer is not None:
            try:
                with self._tensorboard_failures():
                    self.writer.flush()  # raises what the background thread ran into
                    self.writer.close()
            finally:
                self.writer = None

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

