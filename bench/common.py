"""What every benchmark shares: the benchmark shapes and their FLOPs formula,
timing (warm-up, interleaved windows, medians), the GEMM peak and copy
bandwidth measured in the same run, the environment header and the dated
results file ``bench/results/<what>_<hardware>_<yyyymmdd>.md``.

Peak numbers of the hardware (GEMM rate, copy bandwidth, data-sheet bf16
peaks) are in :mod:`bench.peaks`.

The CPU of a development machine is shared with other people's jobs, so no
single timing means much: every number here is a median over several
windows, and comparisons are made between contenders timed in the same run,
window by window (round-robin, with the order rotated every round).

Example::

    windows = interleaved_windows({"ours": step_a, "peer": step_b}, rounds=5)
    median([w.seconds for w in windows["ours"] if w.quiet])
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"


# ------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class Shape:
    """A model shape plus the batch it is benchmarked at (paper names:
    ``seq_len`` n_s, ``mem_len`` n_m, ``cmem_len`` n_cm, ``compression_rate`` c)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    seq_len: int
    mem_len: int
    cmem_len: int
    compression_rate: int
    batch_size: int
    vocab_size: int = 256
    compression: str = "conv"
    compression_loss: str = "attention"
    sample_rate: int | None = None  # audio recipes: samples per second of the waveform
    dropout: float = 0.0
    tie_embeddings: bool = False

    @property
    def n_keys(self) -> int:
        """K = n_cm + n_m + n_s: the keys every query of a full segment sees."""
        return self.cmem_len + self.mem_len + self.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def model_config(self):
        from ct_core.model.config import ModelConfig

        return ModelConfig(
            vocab_size=self.vocab_size, n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
            d_ff=self.d_ff, seq_len=self.seq_len, mem_len=self.mem_len, cmem_len=self.cmem_len,
            compression_rate=self.compression_rate, compression=self.compression,
            compression_loss=self.compression_loss, dropout=self.dropout, tie_embeddings=self.tie_embeddings,
        )

    def replace(self, **changes) -> "Shape":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        return (f"{self.name}: {self.n_layers} layers, d_model {self.d_model}, {self.n_heads} heads, d_ff {self.d_ff}, "
                f"seq/mem/cmem {self.seq_len}/{self.mem_len}/{self.cmem_len}, c = {self.compression_rate}, "
                f"batch {self.batch_size}, vocab {self.vocab_size}")


def matmul_parameters(shape: Shape) -> int:
    """N: weights every token multiplies by (q, k, v, o, the two FF matrices,
    the output head); embeddings are look-ups and not counted."""
    d, f = shape.d_model, shape.d_ff
    return shape.n_layers * (4 * d * d + 2 * d * f) + d * shape.vocab_size


def model_flops_per_token(shape: Shape) -> float:
    """Training FLOPs per token: ``6·N + 12·L·D·K`` (the PaLM MFU formula with
    the attended span K = n_cm + n_m + n_s instead of the sequence length).

    6·N: forward (2·N) plus backward (4·N) of every weight matrix. 12·L·D·K:
    QKᵀ and A·V cost 2·K·D each per token and layer in the forward pass, times
    three for forward + backward; the dense K (no causal discount) is what all
    implementations here compute. Not counted: relative-position scores,
    re-projecting the memories' keys/values every segment, the compression
    loss, norms, softmax and the optimizer (see the executed FLOPs column).
    """
    return 6.0 * matmul_parameters(shape) + 12.0 * shape.n_layers * shape.d_model * shape.n_keys


SHAPES: dict[str, Shape] = {
    "S": Shape("S", n_layers=4, d_model=256, n_heads=4, d_ff=1024, seq_len=128, mem_len=128, cmem_len=128,
               compression_rate=4, batch_size=8),
    "M": Shape("M", n_layers=8, d_model=512, n_heads=8, d_ff=2048, seq_len=256, mem_len=256, cmem_len=256,
               compression_rate=4, batch_size=4),
}

#: Recipe shapes by short name -> the experiment that defines them.
RECIPES = {"demo": "audio/demo", "speech_ct": "audio/speech_ct", "speech_txl": "audio/speech_txl",
           "enwik8_ct": "text/enwik8_ct", "enwik8_txl": "text/enwik8_txl", "pg19_ct": "text/pg19_ct",
           "pg19_txl": "text/pg19_txl", "shakespeare": "text/shakespeare_cpu"}


def recipe_shape(name: str) -> Shape:
    """The shape, training batch and vocabulary of a recipe (``--shape speech_ct``)."""
    from ct_core.cli.common import compose_recipe
    from ct_core.errors import ConfigError

    overrides = [f"experiment={RECIPES[name]}"]
    try:
        raw = compose_recipe(overrides, "bench")
    except ConfigError as err:
        # Paper recipes require a data path; it is never read here.
        key = "root" if "data.root" in str(err) else "path"
        raw = compose_recipe([*overrides, f"data.{key}=/unused"], "bench")
    data, values = raw["data"], {**raw["model"], **raw["memory"], **raw["compression"]}
    if data["frontend"] == "audio":
        vocab = 256  # 8-bit μ-law
    else:
        vocab = int(data["vocab_size"]) if data.get("tokenizer") == "sentencepiece" else 256
    return Shape(name, n_layers=values["n_layers"], d_model=values["d_model"], n_heads=values["n_heads"],
                 d_ff=values["d_ff"], seq_len=values["seq_len"], mem_len=values["mem_len"],
                 cmem_len=values["cmem_len"], compression_rate=values["compression_rate"],
                 batch_size=int(raw["trainer"]["batch_size"]), vocab_size=vocab,
                 compression=values["compression"], compression_loss=values["compression_loss"],
                 sample_rate=data.get("sample_rate"), dropout=values["dropout"],
                 tie_embeddings=values["tie_embeddings"])


def get_shape(name: str) -> Shape:
    if name in SHAPES:
        return SHAPES[name]
    if name in RECIPES:
        return recipe_shape(name)
    raise SystemExit(f"unknown shape {name!r}; choose from {', '.join([*SHAPES, *RECIPES])}")


# ------------------------------------------------------------------ timing
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


def environment_header(module: str, device: torch.device) -> list[str]:
    """Markdown lines: command, commit, versions, device, date, threads."""
    return [f"- command: `{' '.join(['python -m', module, shlex.join(sys.argv[1:])]).strip()}`",
            f"- commit: `{git_commit()}`",
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
