"""Stopping training on request: Ctrl-C (SIGINT) or SIGTERM (a scheduler's
pre-emption, ``kill``) finish the current step, save, then stop.

Inside :class:`StopRequests` the first such signal only sets a flag (and
says so on stderr); the training loop checks :meth:`StopRequests.requested`
between steps, saves a checkpoint and raises :class:`TrainingStopped`. A
second signal means "now": it raises ``KeyboardInterrupt`` at once (a save
in progress is abandoned and its temporary file removed; the previous
checkpoint stays). Under ``torchrun`` every rank stops at the same step, so
that the checkpoint's collective gather does not hang.

Example::

    with StopRequests() as stop:
        while training:
            if stop.requested(ctx, device):
                save(); raise TrainingStopped(stop.signal_name, stop.signum, step, checkpoint)
            train_step()
        save(); stop.release()   # from here on a signal stops at once
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import torch

from ct_core.train.distributed import DistContext, all_reduce_sum

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(Exception):
    """Training stopped on a signal after saving ``checkpoint`` at ``step``."""

    def __init__(self, signal_name: str, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"{signal_name} at step {step}; saved {checkpoint}")
        self.signal_name, self.signum, self.step, self.checkpoint = signal_name, signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal (130 for Ctrl-C)."""
        return 128 + self.signum


class StopRequests:
    """Catch SIGINT/SIGTERM while active; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        self.signum = signum
        print(f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              "(send it again to stop without saving)", file=sys.stderr, flush=True)

    def requested(self, ctx: DistContext | None = None, device: torch.device | None = None) -> bool:
        """Whether to stop now; under torchrun, whether any rank was asked."""
        asked = self.signum is not None
        if ctx is None or not ctx.enabled:
            return asked
        (total,) = all_reduce_sum(ctx, [float(asked)], device or torch.device("cpu"))
        if total and self.signum is None:
            self.signum = signal.SIGTERM  # another rank was signalled
        return total > 0

    def release(self) -> None:
        """Give the signals back to their previous handlers (Ctrl-C raises
        ``KeyboardInterrupt`` again) before the ``with`` block ends."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> "StopRequests":
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
