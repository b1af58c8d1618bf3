"""Timing on a shared machine: interleaved windows, quiet-spell detection,
medians, and the GEMM peak and copy bandwidth measured in the same run.

The CPU of a development machine is shared with other people's jobs, so no
single timing means much: every number is a median over several windows,
and contenders are compared window by window, timed round-robin with the
order rotated every round. Each window records the share of the machine
that other processes used meanwhile; windows where it stayed under
:data:`QUIET_SHARE` are quiet.

Example::

    windows = interleaved_windows({"ours": step_a, "peer": step_b}, rounds=5)
    median([w.seconds for w in windows["ours"] if w.quiet])
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all processes have used, CPU seconds this one has used): read
    around a timed window, their difference is what other jobs took meanwhile."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError):
        busy = float("nan")
    return busy, own.ru_utime + own.ru_stime


@dataclass
class Window:
    seconds: float
    others: float  # share of the machine's CPU time other processes used during the window

    @property
    def quiet(self) -> bool:
        """Other jobs took less than QUIET_SHARE of the CPU (NaN: unknown, counted as quiet)."""
        return not self.others >= QUIET_SHARE


#: A window is "quiet" when other processes used less than this share of all cores.
QUIET_SHARE = 0.10


def others_share(before: tuple[float, float], after: tuple[float, float], wall: float) -> float:
    """Share of all cores that other processes used between two :func:`cpu_seconds`."""
    return max((after[0] - before[0]) - (after[1] - before[1]), 0.0) / (wall * (os.cpu_count() or 1))


_wait_budget = [float("inf")]  # seconds of waiting left to this process


def set_wait_budget(seconds: float) -> None:
    """Cap the total time :func:`wait_for_quiet` may spend in this process,
    so that a machine that never goes quiet still finishes the benchmark."""
    _wait_budget[0] = seconds


def wait_for_quiet(max_wait: float, probe: float = 0.5) -> float:
    """Sleep until other processes used less than :data:`QUIET_SHARE` of the
    CPU over one ``probe`` interval, or ``max_wait`` seconds passed (or the
    budget of :func:`set_wait_budget` is spent); returns the seconds waited.
    Starting windows in quiet spells makes quiet windows likely on a machine
    whose other jobs come and go."""
    start = time.perf_counter()
    limit = min(max_wait, _wait_budget[0])
    while limit > 0:
        before, t0 = cpu_seconds(), time.perf_counter()
        time.sleep(probe)
        now = time.perf_counter()
        if others_share(before, cpu_seconds(), now - t0) < QUIET_SHARE or now - start >= limit:
            break
    waited = time.perf_counter() - start
    _wait_budget[0] -= waited
    return waited


def interleaved_windows(
    tasks: dict[str, Callable[[], None]], rounds: int, calls_per_window: dict[str, int] | int = 1,
    device: torch.device = torch.device("cpu"), max_wait: float = 0.0,
) -> dict[str, list[Window]]:
    """One window per task and round, timed round-robin.

    The order rotates every round so that no task always runs right after
    the same neighbour. Load from other users then hits all tasks alike,
    per-round ratios stay meaningful, and each window records how much CPU
    other processes took meanwhile (see :attr:`Window.quiet`). With
    ``max_wait`` every window waits up to that long for a quiet spell (CPU only).
    """
    names = list(tasks)
    calls = calls_per_window if isinstance(calls_per_window, dict) else {n: calls_per_window for n in names}
    out: dict[str, list[Window]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if device.type == "cpu":
                wait_for_quiet(max_wait)
            sync(device)
            before, start = cpu_seconds(), time.perf_counter()
            for _ in range(calls[name]):
                tasks[name]()
            sync(device)
            wall = time.perf_counter() - start
            # GPU timings do not depend on other CPU jobs: every window counts.
            others = others_share(before, cpu_seconds(), wall) if device.type == "cpu" else 0.0
            out[name].append(Window(wall, others))
    return out


def timed(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> tuple[float, object]:
    """(seconds, result) of one call."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result
