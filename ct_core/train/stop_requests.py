"""Stopping training on request: Ctrl-C (SIGINT) or SIGTERM (a scheduler's
pre-emption, ``kill``) finish the current step, save, then stop.

Inside :class:`StopRequests` the first such signal only sets a flag (and
says so on stderr); the training loop checks :meth:`StopRequests.requested`
between steps, saves a checkpoint and raises :class:`TrainingStopped`. A
second signal means "now": it raises ``KeyboardInterrupt`` at once (a save
in progress is abandoned and its temporary file removed; the previous
checkpoint stays). Under ``torchrun`` every rank stops at the same step, so
that the checkpoint's collective gather does not hang: the ranks learn of
each other's signals one step late, through an all-reduce on a gloo group
of its own that runs in the background
(:class:`~ct_core.train.distributed.AnyRankFlag`), so checking costs the
step no GPU sync and no blocking collective.

Example::

    with StopRequests(ctx) as stop:
        while training:
            if stop.requested():
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

from ct_core.train.distributed import AnyRankFlag, DistContext

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
    """Catch SIGINT/SIGTERM while active; the previous handlers come back on
    exit. Under torchrun (``ctx.enabled``) every rank must enter together."""

    def __init__(self, ctx: DistContext | None = None) -> None:
        self.ctx = ctx or DistContext()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._any_rank: AnyRankFlag | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        self.signum = signum
        print(f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              "(send it again to stop without saving)", file=sys.stderr, flush=True)

    def requested(self) -> bool:
        """Whether to stop now: this process was signalled, or, under
        torchrun, some rank had been by the previous call (all ranks agree;
        a signal reaches the decision one step later than alone). Call it
        once per step on every rank."""
        asked = self.signum is not None
        if self._any_rank is None:
            return asked
        stop = self._any_rank.exchange(asked)
        if stop and self.signum is None:
            self.signum = signal.SIGTERM  # another rank was signalled
        return stop

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
        if self.ctx.enabled:
            self._any_rank = AnyRankFlag(self.ctx)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.release()
        # After an error of this rank alone the others may never send their
        # part of the exchange in flight: leave it, the process is going down.
        clean = exc_type is None or (isinstance(exc_type, type) and issubclass(exc_type, TrainingStopped))
        if self._any_rank is not None and clean:
            self._any_rank.close()
        self._any_rank = None
