"""Rows of ``bench.gpu_check`` that train: the measured GEMM peak, then
``speech_ct`` trained through ``Trainer.fit()`` itself (the path users run:
logging, stop checks, prefetching, updates skipped on the device, the final
checkpoint and evaluation), plain, with activation checkpointing, and
wrapped in DDP over NCCL at world size 1.

Each training row runs three logging windows of ``W`` steps: the first
compiles and fills the memories, the next two are steady. Tokens are the
trainer's own count of real targets (padding excluded), its rate is what
the trainer logged for the last window (the host waits for the GPU at each
logging step, so a window's time covers its work). Checked, not just
printed: finite losses, no update skipped (no ``nonfinite_skipped`` row in
the metrics), no graph compiled in the steady windows, finite weights; for
DDP, that the DDP wrapper really ran.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.gpu_context import CheckContext, Outcome
from bench.peaks import bf16_peak_flops
from bench.shapes import Shape, model_flops_per_token


def gemm_row(ctx: CheckContext) -> Outcome:
    peak = ctx.gemm_peak()
    data_sheet, source = bf16_peak_flops(ctx.device)
    what = "bf16" if ctx.cuda else "fp32"
    summary = f"{peak / 1e12:,.1f} TFLOP/s measured ({what} square matmul)"
    if data_sheet:
        summary += f"; {peak / data_sheet:.0%} of the data sheet's {source}"
    return Outcome(math.isfinite(peak) and peak > 0, summary, {"gemm_flops": peak, "data_sheet_flops": data_sheet})


def steady_state_steps(shape: Shape) -> int:
    """Steps until the memories are full (compiling happens in the first)."""
    return math.ceil(shape.mem_len / shape.seq_len) + math.ceil(
        shape.cmem_len * shape.compression_rate / shape.seq_len) + 1


def recipe(shape: Shape, ctx: CheckContext, window: int, activation_checkpointing: bool) -> dict[str, Any]:
    """The mapping a recipe resolves to, for ``shape`` on synthetic data."""
    return {
        "model": {"n_layers": shape.n_layers, "d_model": shape.d_model, "n_heads": shape.n_heads,
                  "d_ff": shape.d_ff, "dropout": shape.dropout},
        "memory": {"seq_len": shape.seq_len, "mem_len": shape.mem_len, "cmem_len": shape.cmem_len,
                   "compression_rate": shape.compression_rate},
        "compression": {"compression": shape.compression, "compression_loss": shape.compression_loss},
        "data": {"frontend": "synthetic", "n_documents": 20, "vocab_size": shape.vocab_size,
                 "min_len": 20 * shape.seq_len, "max_len": 40 * shape.seq_len},
        "optim": {"name": "adam", "lr": 3e-4, "min_lr": 1e-6, "warmup_steps": 100, "clip_norm": 0.1},
        "trainer": {"steps": 3 * window, "batch_size": shape.batch_size, "device": str(ctx.device),
                    "precision": "bf16" if ctx.cuda else "fp32", "compile": ctx.compile_backend is not None,
                    "compile_backend": ctx.compile_backend or "inductor", "attention_backend": "auto",
                    "activation_checkpointing": activation_checkpointing, "log_every": window,
                    "eval_every": 10**6, "save_every": 10**6, "final_eval": False, "eval_max_batches": 1,
                    "threads": None if ctx.cuda else 1},
        "eval": {"batch_size": shape.batch_size},
    }


def fit_once(ctx: CheckContext, shape: Shape, activation_checkpointing: bool = False,
             dist_ctx: Any = None) -> dict[str, Any]:
    """Train ``shape`` through ``Trainer.fit()``; what the trainer logged and measured."""
    from torch._dynamo.utils import counters

    from ct_core.data.frontend import build_frontend
    from ct_core.train.attention_backend import flex_self_test
    from ct_core.train.run_config import RunConfig
    from ct_core.train.trainer import Trainer

    window = max(ctx.args.steps, steady_state_steps(shape))
    raw = recipe(shape, ctx, window, activation_checkpointing)
    frontend = build_frontend(raw["data"])
    cfg = RunConfig.from_dict(raw, vocab_size=frontend.vocab_size)
    graphs: list[int] = []
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, frontend, Path(run_dir), dist_ctx, attention_self_test=ctx.self_test(flex_self_test))
        log = trainer.logger.log

        def log_and_count(step: int, metrics: Any, split: str = "train") -> None:
            if split == "train" and "loss" in metrics:
                graphs.append(counters["stats"]["unique_graphs"])
            log(step, metrics, split)

        trainer.logger.log = log_and_count
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        trainer.fit()
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        ddp = isinstance(trainer.forward, torch.nn.parallel.DistributedDataParallel)
        finite_weights = all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
        attention = trainer.model.execution.attention
        tokens_seen, steps = trainer.tokens_seen, trainer.step
    train = [r for r in rows if r["split"] == "train" and "loss" in r]
    skipped = sum(r.get("nonfinite_skipped", 0) for r in rows)
    return {
        "tokens_per_s": train[-1]["tokens_per_s"], "loss": train[-1]["loss"], "losses": [r["loss"] for r in train],
        "window": window, "steps": steps, "tokens_seen": tokens_seen,
        "lane_tokens": steps * shape.batch_size * shape.seq_len, "skipped_updates": skipped,
        "graphs_in_steady_windows": graphs[-1] - graphs[0] if len(graphs) == 3 else None,
        "peak_allocated_gib": torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(ctx.device) / 2**30 if ctx.cuda else None,
        "attention": attention, "ddp": ddp, "finite_weights": finite_weights,
        "step_ms": 1000 * shape.batch_size * shape.seq_len / train[-1]["tokens_per_s"],
    }


def training_outcome(ctx: CheckContext, name: str, shape: Shape, r: dict[str, Any]) -> Outcome:
    """Verdict and one line for a training row, MFU against both peaks."""
    flops = r["tokens_per_s"] * model_flops_per_token(shape)
    data_sheet, _ = bf16_peak_flops(ctx.device)
    r["mfu_data_sheet"] = flops / data_sheet if data_sheet else None
    r["mfu_measured_gemm"] = flops / ctx.gemm_peak()
    ctx.training[name] = r
    problems = []
    if not all(math.isfinite(x) for x in r["losses"]):
        problems.append("non-finite loss")
    if r["skipped_updates"]:
        problems.append(f"{r['skipped_updates']} update(s) skipped")
    if r["graphs_in_steady_windows"]:
        problems.append(f"{r['graphs_in_steady_windows']} graph(s) compiled after warm-up")
    if not r["finite_weights"]:
        problems.append("non-finite weights")
    if not 0 < r["tokens_seen"] <= r["lane_tokens"]:
        problems.append(f"{r['tokens_seen']} targets counted for {r['lane_tokens']} lane positions")
    memory = (f"; peak {r['peak_allocated_gib']:.1f} GiB allocated, {r['peak_reserved_gib']:.1f} GiB reserved"
              if r["peak_allocated_gib"] is not None else "")
    mfu = f"MFU {r['mfu_measured_gemm']:.1%} of the measured GEMM peak"
    if r["mfu_data_sheet"] is not None:
        mfu += f", {r['mfu_data_sheet']:.1%} of the data sheet's"
    summary = (f"{r['tokens_per_s']:,.0f} tokens/s ({r['step_ms']:,.0f} ms/step, {shape.batch_size} lanes, "
               f"attention {r['attention']}); {mfu}{memory}; targets {r['tokens_seen']:,} of "
               f"{r['lane_tokens']:,} lane positions")
    if problems:
        summary = "; ".join(problems) + "; " + summary
    return Outcome(not problems, summary, r)


def train_row(ctx: CheckContext, activation_checkpointing: bool) -> Outcome:
    name = "train_checkpointing" if activation_checkpointing else "train"
    r = fit_once(ctx, ctx.speech, activation_checkpointing)
    out = training_outcome(ctx, name, ctx.speech, r)
    plain = ctx.training.get("train")
    if activation_checkpointing and plain:
        out.summary += f"; vs off: {r['tokens_per_s'] / plain['tokens_per_s']:.2f}× the rate"
        if r["peak_allocated_gib"] is not None:
            out.summary += f", {r['peak_allocated_gib'] / plain['peak_allocated_gib']:.2f}× the memory"
    return out


def ddp_row(ctx: CheckContext) -> Outcome:
    """DDP at world size 1, forced: a real process group (NCCL on CUDA,
    gloo on a CPU), the DDP wrapper, its bucket all-reduce and the
    compiled blocks under it."""
    import torch.distributed as dist

    from ct_core.train.distributed import DistContext

    backend = "nccl" if ctx.cuda else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        options = {"device_id": ctx.device} if ctx.cuda else {}
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1, **options)
        try:
            r = fit_once(ctx, ctx.speech, dist_ctx=DistContext(0, 1, 0, forced=True))
        finally:
            dist.destroy_process_group()
    out = training_outcome(ctx, "ddp", ctx.speech, r)
    out.summary = f"{backend}, world size 1; " + out.summary
    if not r["ddp"]:
        out.passed, out.summary = False, "the DDP wrapper did not run; " + out.summary
    plain = ctx.training.get("train")
    if plain:
        out.summary += f"; vs without DDP: {r['tokens_per_s'] / plain['tokens_per_s']:.2f}× the rate"
    return out
