"""One command for a GPU: do the GPU paths work there, and how fast are they.

    python -m bench.gpu_check --budget 420 --out results/      # the CUDA device present: about 6 minutes
    python -m bench.gpu_check --device cpu --steps 2           # dry run: small shapes, aot_eager; a minute or two

Rows run one after the other (:data:`ROWS`, with what each is expected to
take on one H200, compiles included). Each row's result is written as soon
as it finishes: a JSON line appended to ``<out>/gpu_<device>_<date>.jsonl``
and the Markdown report ``<out>/gpu_<device>_<date>.md`` regenerated, so a
timeout or a crash in a later row loses nothing. A row that raises
(anything, ``BaseException`` included) is recorded with its error and the
next one runs; Ctrl-C, or a SIGTERM caught by a training row, records the
row it stopped and ends the check (a SIGTERM elsewhere ends it at once).
``--only``/``--skip`` pick rows; ``--budget SECONDS`` skips, and lists,
the rows whose estimate would no longer fit.

Only torch and the project are imported (no Hydra, omegaconf, librosa,
soundfile or torchaudio), so it runs on a bare GPU image; where there is
no ``.git``, ``--commit`` or ``CT_COMMIT`` names the commit. TF32 is on for
throughput (``--no-tf32`` turns it off) and off inside every comparison
against a reference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from bench.check_results import CheckResults, RowResult
from bench.gpu_context import CheckContext, Outcome
from bench.gpu_reference_rows import decoding_row, flex_row
from bench.gpu_sampling_rows import sampling_row
from bench.gpu_training_rows import ddp_row, gemm_row, train_row
from bench.peaks import allow_tf32
from bench.report import RESULTS_DIR, environment_header, hardware_tag


@dataclass(frozen=True)
class Row:
    name: str
    checks: str  # what the row checks, for the report
    run: Callable[[CheckContext], Outcome]
    estimate_s: float  # one H200, torch 2.11, compiles included (an estimate: see bench/README.md)
    dry_estimate_s: float  # the CPU dry run


ROWS = (
    Row("flex_fp32", "FlexAttention ≡ SDPA, fp32 (TF32 off): logits and every gradient",
        lambda c: flex_row(c, "fp32"), 45, 10),
    Row("flex_bf16", "FlexAttention ≡ SDPA, bf16, compiled: logits, loss, every gradient",
        lambda c: flex_row(c, "bf16"), 45, 1),
    Row("gemm_peak", "bf16 GEMM peak measured (MFU's second denominator)", gemm_row, 10, 2),
    Row("train", "speech_ct through Trainer.fit(): tokens/s, MFU, peak memory, no update skipped",
        lambda c: train_row(c, False), 80, 15),
    Row("train_checkpointing", "the same with activation checkpointing on",
        lambda c: train_row(c, True), 60, 15),
    Row("ddp", "DDP over NCCL at world size 1 (forced): wrapper, bucket all-reduce, compiled blocks",
        ddp_row, 40, 15),
    Row("decode_fp32", "CUDA-graph decoding ≡ eager, fp32 (TF32 off), 500 greedy tokens × 4 streams",
        lambda c: decoding_row(c, "fp32"), 15, 20),
    Row("decode_bf16", "CUDA-graph decoding ≡ eager, bf16, 500 greedy tokens × 4 streams",
        lambda c: decoding_row(c, "bf16"), 15, 1),
    Row("sampling", "speech_ct audio sampling, batch 1 and 64: real-time factor after warm-up",
        sampling_row, 25, 10),
)
ROW_NAMES = tuple(row.name for row in ROWS)


def row_list(text: str | None, option: str) -> tuple[str, ...]:
    """Comma-separated row names; a one-line exit for an unknown one."""
    if text is None:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in ROW_NAMES:
            raise SystemExit(f"gpu_check: error: {option} {name}: no such row; rows: {', '.join(ROW_NAMES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--steps", type=int, default=10,
                   help="steps per logging window of the training rows (three windows; at least until memories fill)")
    p.add_argument("--samples", type=int, default=None,
                   help="new audio samples per stream (default: two segments, so memories roll)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend: inductor on CUDA, aot_eager on CPU; none: eager")
    p.add_argument("--no-tf32", action="store_true", help="keep fp32 matmuls in full fp32 for throughput too")
    p.add_argument("--only", help=f"run only these rows (comma-separated: {', '.join(ROW_NAMES)})")
    p.add_argument("--skip", help="run every row but these (comma-separated)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="skip (and list) the rows whose estimate no longer fits in SECONDS from the start")
    p.add_argument("--commit", default=os.environ.get("CT_COMMIT"),
                   help="the commit checked out, where there is no .git (default: $CT_COMMIT, else git)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the report")
    args = p.parse_args(argv)
    args.only, args.skip = row_list(args.only, "--only"), row_list(args.skip, "--skip")
    if args.compile_backend is None:
        args.compile_backend = "inductor" if args.device.startswith("cuda") else "aot_eager"
    return args


def planned_rows(args: argparse.Namespace) -> list[Row]:
    return [row for row in ROWS if (not args.only or row.name in args.only) and row.name not in args.skip]


def run_row(row: Row, ctx: CheckContext, estimate: float) -> RowResult:
    """Run ``row``; whatever it raises becomes its result."""
    print(f"[gpu_check] {row.name}: {row.checks} (about {estimate:.0f} s)", file=sys.stderr, flush=True)
    began = time.perf_counter()
    try:
        out = row.run(ctx)
    except BaseException as err:  # noqa: BLE001 - a failing row must not lose the others
        traceback.print_exc()
        text = str(err).strip()
        line = f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__
        return RowResult(row.name, "error", time.perf_counter() - began, estimate, line, error=line,
                         traceback=traceback.format_exc())
    status = "skipped" if out.passed is None else "ok" if out.passed else "FAILED"
    return RowResult(row.name, status, time.perf_counter() - began, estimate, out.summary, out.values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: error: no CUDA device here; `python -m bench.gpu_check --device cpu "
                             "--steps 2` is the dry run")
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    allow_tf32(not args.no_tf32)
    ctx = CheckContext(args, device)
    cuda = device.type == "cuda"
    header = environment_header("bench.gpu_check", device, args.commit) + [
        f"- CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s); TF32 "
        f"{'off' if args.no_tf32 else 'on'} for throughput, off in comparisons; compile backend "
        f"{args.compile_backend}" if cuda else "- dry run on the CPU: small shapes, fp32"]
    stem = args.out / f"gpu_{hardware_tag(device, torch.get_num_threads())}_{dt.date.today():%Y%m%d}"
    title = "GPU check" + ("" if cuda else " (dry run on a CPU)")
    results = CheckResults(stem, title, header, {row.name: row.checks for row in ROWS})
    print(f"[gpu_check] writing {results.markdown} and {results.jsonl}", file=sys.stderr, flush=True)
    began, over_budget = time.perf_counter(), []
    for row in planned_rows(args):
        estimate = row.estimate_s if cuda else row.dry_estimate_s
        if args.budget is not None and time.perf_counter() - began + estimate > args.budget:
            over_budget.append(row.name)
            continue
        result = run_row(row, ctx, estimate)
        results.add(result)
        # Ctrl-C, or a SIGTERM (``timeout``) that a training row turned into a saved stop: end here.
        if result.error and result.error.split(":")[0] in ("KeyboardInterrupt", "TrainingStopped"):
            results.note(f"Stopped during {row.name} ({result.error}): the rows after it did not run.")
            return 130
    if over_budget:
        results.note(f"Skipped for the budget of {args.budget:.0f} s: {', '.join(over_budget)}.")
    print(results.markdown.read_text())
    return 1 if results.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
