"""Results files: the environment header every results file starts with
(command, commit, torch and peer versions, device, date, threads, load) and
the dated file ``bench/results/<what>_<hardware>_<yyyymmdd>.md`` itself.

Example::

    header = environment_header("bench.train_throughput", device)
    write_results("train_throughput", device, threads, "Training throughput", header, body)
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch

from bench.timing import QUIET_SHARE

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"


# ------------------------------------------------------------- environment
def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} logical cores)"


def hardware_tag(device: torch.device, threads: int) -> str:
    """``amd-epyc-2t`` / ``nvidia-h100-80gb-hbm3``: the ``<hardware>`` of results file names."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug if device.type == "cuda" else f"{slug}-{threads}t"


def git_commit() -> str:
    """HEAD, plus the tracked files outside bench/ that differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
        except OSError:  # no git on this machine (a bare GPU box)
            return ""

    head = git("rev-parse", "HEAD") or "unknown"
    dirty = git("diff", "--name-only", "HEAD", "--", ".", ":!bench").splitlines()
    more = ", ..." if len(dirty) > 3 else ""
    return head + (f" (uncommitted changes in {', '.join(dirty[:3])}{more})" if dirty else "")


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def environment_header(module: str, device: torch.device, commit: str | None = None) -> list[str]:
    """Markdown lines: command, commit (``commit``, else read from git), versions, device, date, threads."""
    return [f"- command: `{' '.join(['python -m', module, shlex.join(sys.argv[1:])]).strip()}`",
            f"- commit: `{commit or git_commit()}`",
            f"- torch {torch.__version__}, Python {platform.python_version()}; peers: compressive-transformer-pytorch "
            f"{package_version('compressive-transformer-pytorch')}, x-transformers {package_version('x-transformers')}",
            f"- device: {device_name(device)}; torch threads: {torch.get_num_threads()}",
            f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- load average (1/5/15 min) at start: {load_average()}"]


SHARED_CPU_NOTE = (
    "The CPU was shared with other users' jobs during this run (at times a whole test suite), and two "
    "busy threads of another process slow a 2-thread torch job several-fold, so absolute rates move from "
    "window to window. Each window records the CPU share other processes took meanwhile (from /proc/stat); "
    f"windows where they took under {QUIET_SHARE:.0%} of the machine are 'quiet'. Medians and ratios use the "
    "quiet rounds (every contender of the round quiet) when there are at least 3, else all rounds, as marked; "
    "ratios are medians of per-round ratios of contenders timed back to back."
)


# ----------------------------------------------------------------- results
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write_results(what: str, device: torch.device, threads: int, title: str, header: list[str],
                  body: list[str]) -> Path:
    """Write ``bench/results/<what>_<hardware>_<yyyymmdd>.md`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{what}_{hardware_tag(device, threads)}_{dt.date.today():%Y%m%d}.md"
    footer = [f"- load average (1/5/15 min) at the end: {load_average()}"]
    path.write_text("\n".join([f"# {title}", "", *header, *footer, "", *body, ""]))
    return path


def fmt(x: float) -> str:
    """Three significant digits, thousands separated."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
