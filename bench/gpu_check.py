"""One command for a GPU: do the GPU paths work there, and how fast are they.

    python -m bench.gpu_check                           # the CUDA device present; under 8 minutes
    python -m bench.gpu_check --device cpu --steps 2    # dry run: small shapes, aot_eager; under a minute

Every part runs even when another fails, and the report says which failed:

1. GPU-only paths against their references on a tiny fp32 model:
   FlexAttention against SDPA (logits and every gradient; forward only on
   CPU, where FlexAttention has no backward) and the CUDA-graph decoding
   step against the variable-shape one (logits over two segments).
2. Compiled bf16 training through the trainer itself (per-block
   ``torch.compile``, FlexAttention, fused Adam, updates skipped on the
   device, prefetched batches) at the shapes of ``speech_ct`` and
   ``enwik8_ct``, and ``speech_ct`` once more with SDPA (FlexAttention
   accumulates the gradient of its position scores with atomics, which may
   cost more than it saves): tokens/s, MFU against the device's dense bf16
   peak (data sheet; a measured GEMM rate where the device is not in the
   table), peak memory, and graphs compiled after warm-up (should be 0).
3. Batched audio sampling at 24 kHz with the ``speech_ct`` shape at batch
   1 and 64 (bf16, CUDA graph): real-time factor, all streams together.
4. A 2-process NCCL run of the trainer when there are two GPUs: tokens/s
   and whether both ranks hold the same weights afterwards.

It writes ``bench/results/gpu_<device>_<date>.md`` (``--out`` elsewhere).
Only torch, numpy, tqdm and tensorboard are needed, no Hydra: the shapes
are written here (a test checks them against the recipes) and the trainer
is configured from a plain mapping, with synthetic data. TF32 is on for
whatever stays fp32 (``--no-tf32`` turns it off).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench.report import RESULTS_DIR, environment_header, hardware_tag, markdown_table
from bench.shapes import Shape, model_flops_per_token
from bench.timing import sync
from bench.peaks import allow_tf32, bf16_peak_flops, measure_gemm_peak

#: Recipe shapes at a per-GPU batch that fits an 80 GB GPU without
#: activation checkpointing (bench/results/activation_memory_*.md).
SHAPES = {
    "speech_ct": Shape("speech_ct", n_layers=20, d_model=384, n_heads=6, d_ff=1024, seq_len=768, mem_len=768,
                       cmem_len=768, compression_rate=4, batch_size=16, dropout=0.1, sample_rate=24000),
    "enwik8_ct": Shape("enwik8_ct", n_layers=24, d_model=1024, n_heads=8, d_ff=3072, seq_len=768, mem_len=768,
                       cmem_len=1152, compression_rate=3, batch_size=8, dropout=0.1),
}
AUDIO_BATCHES = (1, 64)


def dry_shape(shape: Shape) -> Shape:
    """A few-second CPU stand-in with the recipe's compression and layout."""
    return shape.replace(n_layers=2, d_model=32, n_heads=2, d_ff=64, seq_len=24, mem_len=24, cmem_len=12,
                         batch_size=2)


def tiny_model(device: torch.device, **changes: Any):
    """A small fp32 model with non-zero position biases (the checks' subject)."""
    from ct_core.model.config import ModelConfig
    from ct_core.model.lm import CompressiveTransformerLM

    torch.manual_seed(0)
    values = dict(vocab_size=64, n_layers=2, d_model=64, n_heads=2, d_ff=128, seq_len=128, mem_len=128,
                  cmem_len=64, compression_rate=4, compression="conv", compression_loss="attention")
    model = CompressiveTransformerLM(ModelConfig(**{**values, **changes})).to(device)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.u.normal_(0, 0.5)
            blk.attn.v.normal_(0, 0.5)
    return model


# ------------------------------------------------------------------ checks
def check_flex(device: torch.device) -> list[list[Any]]:
    """FlexAttention against SDPA: logits (and on CUDA every gradient)."""
    from ct_core.model.execution import Execution

    model = tiny_model(device)
    tokens = torch.randint(0, 64, (3, 128 * 3 + 1), generator=torch.Generator().manual_seed(1)).to(device)
    with_grad = device.type == "cuda"

    def run(attention: str):
        model.set_execution(Execution(attention=attention))
        model.zero_grad(set_to_none=True)
        memory, logits = None, []
        with torch.set_grad_enabled(with_grad):
            for s in range(3):
                out = model(tokens[:, s * 128 : (s + 1) * 128], memory)
                if with_grad:
                    F.cross_entropy(out.logits.flatten(0, 1), tokens[:, s * 128 + 1 : (s + 1) * 128 + 1].flatten()
                                    ).backward()
                memory, logits = out.memory, logits + [out.logits.detach()]
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return torch.cat(logits, dim=1), grads

    want, want_grads = run("sdpa")
    got, got_grads = run("flex")
    rows = [["FlexAttention vs SDPA: logits, max |Δ|", f"{(got - want).abs().max().item():.2e}",
             ok((got - want).abs().max().item() < 1e-3)]]
    if with_grad:
        worst = max(((got_grads[n] - g).norm() / g.norm().clamp(min=1e-12)).item() for n, g in want_grads.items())
        rows.append(["FlexAttention vs SDPA: gradients, max relative error", f"{worst:.2e}",
                     ok(worst < 1e-2 and got_grads.keys() == want_grads.keys())])
    else:
        rows.append(["FlexAttention vs SDPA: gradients", "no FlexAttention backward on CPU", "skipped"])
    return rows


def check_graph_decoding(device: torch.device) -> list[list[Any]]:
    """The fixed-shape step (a CUDA graph on CUDA) against the variable-shape one."""
    from ct_core.model.sampling import IncrementalDecoder

    model = tiny_model(device, seq_len=32, mem_len=32, cmem_len=16).eval()
    tokens = torch.randint(0, 64, (4, 80), generator=torch.Generator().manual_seed(2)).to(device)

    def logits(fixed_shape: bool | None) -> torch.Tensor:
        dec = IncrementalDecoder(model, 4, fixed_shape=fixed_shape)
        return torch.cat([dec.feed(tokens[:, :5])] + [dec.feed(tokens[:, i : i + 1]) for i in range(5, 80)], dim=1)

    want = logits(False)
    got = logits(None if device.type == "cuda" else True)
    diff = (got - want).abs().max().item()
    what = "CUDA-graph" if device.type == "cuda" else "fixed-shape (eager on CPU)"
    return [[f"{what} decoding vs variable-shape, logits over 2.5 segments, max |Δ|", f"{diff:.2e}",
             ok(diff < 1e-4)]]


def ok(passed: bool) -> str:
    return "ok" if passed else "**FAILED**"


# ---------------------------------------------------------------- training
def run_config(shape: Shape, args: argparse.Namespace, world_size: int = 1, attention: str = "auto") -> dict[str, Any]:
    """The mapping a recipe resolves to, for ``shape`` on synthetic data."""
    cuda = args.device.startswith("cuda")
    return {
        "model": {"n_layers": shape.n_layers, "d_model": shape.d_model, "n_heads": shape.n_heads,
                  "d_ff": shape.d_ff, "dropout": shape.dropout},
        "memory": {"seq_len": shape.seq_len, "mem_len": shape.mem_len, "cmem_len": shape.cmem_len,
                   "compression_rate": shape.compression_rate},
        "compression": {"compression": shape.compression, "compression_loss": shape.compression_loss},
        "data": {"frontend": "synthetic", "n_documents": 20, "vocab_size": shape.vocab_size,
                 "min_len": 20 * shape.seq_len, "max_len": 40 * shape.seq_len},
        "optim": {"name": "adam", "lr": 3e-4, "min_lr": 1e-6, "warmup_steps": 100, "clip_norm": 0.1},
        "trainer": {"steps": 10**6, "batch_size": shape.batch_size * world_size, "device": args.device,
                    "precision": "bf16" if cuda else "fp32", "compile": args.compile_backend != "none",
                    "compile_backend": args.compile_backend if args.compile_backend != "none" else "inductor",
                    "attention_backend": attention, "log_every": 10**6, "eval_every": 10**6, "save_every": 10**6,
                    "final_eval": False},
        "eval": {"batch_size": shape.batch_size},
    }


def steady_state_steps(shape: Shape) -> int:
    """Steps until the memories are full (compiling happens in the first)."""
    return math.ceil(shape.mem_len / shape.seq_len) + math.ceil(
        shape.cmem_len * shape.compression_rate / shape.seq_len) + 1


def train_shape(shape: Shape, args: argparse.Namespace, device: torch.device, ctx=None,
                attention: str = "auto") -> dict[str, Any]:
    """Warm up to full memories, then time ``args.steps`` trainer steps."""
    from torch._dynamo.utils import counters

    from ct_core.data.frontend import build_frontend
    from ct_core.train.run_config import RunConfig
    from ct_core.train.trainer import Trainer

    world = 1 if ctx is None else ctx.world_size
    raw = run_config(shape, args, world, attention)
    frontend = build_frontend(raw["data"])
    cfg = RunConfig.from_dict(raw, vocab_size=frontend.vocab_size)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, frontend, Path(run_dir), ctx)
        start = time.perf_counter()
        for _ in range(steady_state_steps(shape)):
            trainer.train_step()
        sync(trainer.device)
        warm_seconds = time.perf_counter() - start
        graphs = counters["stats"]["unique_graphs"]
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            stats = trainer.train_step()
        sync(trainer.device)
        seconds = time.perf_counter() - start
        loss = float(stats["loss"])
        peak = torch.cuda.max_memory_allocated(trainer.device) if trainer.device.type == "cuda" else None
        checksum = sum(p.detach().double().sum().item() for p in trainer.model.parameters())
    return {"tokens_per_s": args.steps * shape.batch_size * world * shape.seq_len / seconds, "loss": loss,
            "warm_seconds": warm_seconds, "step_seconds": seconds / args.steps, "peak": peak,
            "new_graphs": counters["stats"]["unique_graphs"] - graphs, "checksum": checksum}


def training_rows(runs: list[tuple[str, Shape, str]], args: argparse.Namespace, device: torch.device,
                  peak: tuple[float, str]) -> list[list[Any]]:
    """One row per ``(label, shape, attention backend)``."""
    rows = []
    for name, shape, attention in runs:
        print(f"[gpu_check] training {shape.describe()}, attention {attention}", flush=True)
        r = guarded(lambda: train_shape(shape, args, device, attention=attention))
        if isinstance(r, str):
            rows.append([name, shape.batch_size, r, "", "", "", "", "", "**FAILED**"])
            continue
        mfu = r["tokens_per_s"] * model_flops_per_token(shape) / peak[0]
        passed = math.isfinite(r["loss"]) and math.isfinite(r["checksum"]) and r["new_graphs"] == 0
        rows.append([name, shape.batch_size, f"{r['tokens_per_s']:,.0f}", f"{mfu:.1%}",
                     "—" if r["peak"] is None else f"{r['peak'] / 2**30:.1f}", f"{r['step_seconds'] * 1000:,.0f}",
                     f"{r['warm_seconds']:.0f}", f"{r['new_graphs']}", ok(passed)])
    return rows


# ---------------------------------------------------------------- sampling
def sampling_rows(shape: Shape, device: torch.device, n_new: int) -> list[list[Any]]:
    from ct_core.model.lm import CompressiveTransformerLM
    from ct_core.model.sampling import generate

    torch.manual_seed(0)
    model = CompressiveTransformerLM(shape.model_config()).to(device).eval()
    rows = []
    for batch in AUDIO_BATCHES:
        print(f"[gpu_check] sampling {shape.name} at batch {batch}", flush=True)
        start_token = torch.full((batch, 1), 128, dtype=torch.long, device=device)  # μ-law silence
        gen = torch.Generator(device=device).manual_seed(0)

        def sample(n: int) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                return generate(model, start_token, n, generator=gen)

        def timed_sample() -> tuple[float, torch.Tensor]:
            sample(4)  # warm-up: kernels picked, the decoding step captured
            sync(device)
            start = time.perf_counter()
            out = sample(n_new)
            sync(device)
            return time.perf_counter() - start, out

        r = guarded(timed_sample)
        if isinstance(r, str):
            rows.append([batch, r, "", "", "**FAILED**"])
            continue
        seconds, out = r
        rate = batch * n_new / seconds
        valid = out.shape == (batch, 1 + n_new) and bool(((out >= 0) & (out < shape.vocab_size)).all())
        rows.append([batch, f"{rate:,.0f}", f"{rate / shape.sample_rate:.3g}", f"{seconds / n_new * 1000:.2f}",
                     ok(valid)])
    return rows


# -------------------------------------------------------------------- NCCL
def nccl_worker(rank: int, shape: Shape, args: argparse.Namespace, out: Path) -> None:
    import torch.distributed as dist

    from ct_core.train.distributed import DistContext

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=2, init_method=f"file://{out}.store")
    try:
        result = train_shape(shape, args, torch.device("cuda", rank), DistContext(rank, 2, rank))
        sums: list[Any] = [None, None]
        dist.all_gather_object(sums, result["checksum"])
        if rank == 0:
            out.write_text(repr({**result, "same_weights": sums[0] == sums[1]}))
    finally:
        dist.destroy_process_group()


def nccl_rows(shape: Shape, args: argparse.Namespace) -> list[list[Any]]:
    import torch.multiprocessing as mp

    if not args.device.startswith("cuda") or torch.cuda.device_count() < 2:
        return [["skipped", "needs two CUDA devices", "", ""]]
    print(f"[gpu_check] 2-process NCCL, {shape.describe()} per rank", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nccl"
        failure = guarded(lambda: mp.spawn(nccl_worker, args=(shape, args, out), nprocs=2, join=True))
        if isinstance(failure, str):
            return [[failure, "", "", "**FAILED**"]]
        r = eval(out.read_text())  # noqa: S307 - our own repr of numbers and bools
    return [[f"{r['tokens_per_s']:,.0f}", f"{r['step_seconds'] * 1000:,.0f}", str(r["same_weights"]),
             ok(r["same_weights"] and math.isfinite(r["loss"]))]]


# -------------------------------------------------------------------- main
def guarded(fn: Callable[[], Any]) -> Any:
    """``fn()``, or a one-line description of what it raised (the report
    goes on; the traceback goes to stderr)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - a failing part must not hide the others
        traceback.print_exc()
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per shape (after warm-up)")
    p.add_argument("--samples", type=int, default=None,
                   help="new audio samples per stream (default: two segments, so memories roll)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend: inductor on CUDA, aot_eager on CPU; none: eager")
    p.add_argument("--no-tf32", action="store_true", help="keep fp32 matmuls in full fp32")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the report")
    p.add_argument("--no-write", action="store_true", help="print the report only")
    args = p.parse_args(argv)
    if args.compile_backend is None:
        args.compile_backend = "inductor" if args.device.startswith("cuda") else "aot_eager"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run `python -m bench.gpu_check --device cpu --steps 2` "
                         "for a dry run")
    allow_tf32(not args.no_tf32)
    began = time.perf_counter()
    shapes = SHAPES if device.type == "cuda" else {n: dry_shape(s) for n, s in SHAPES.items()}
    speech = shapes["speech_ct"]
    n_new = args.samples or 2 * speech.seq_len
    peak_flops, peak_source = bf16_peak_flops(device)
    if peak_flops is None:
        sizes = None if device.type == "cuda" else (256, 512)
        _, gflops, _ = measure_gemm_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32, sizes,
                                         windows=3)
        peak_flops, peak_source = gflops * 1e9, f"{peak_source}: measured GEMM rate {gflops:,.0f} GFLOP/s"

    checks = []
    for check in (check_flex, check_graph_decoding):
        print(f"[gpu_check] {check.__name__}", flush=True)
        rows = guarded(lambda: check(device))
        checks += rows if isinstance(rows, list) else [[check.__name__, rows, "**FAILED**"]]
    runs = [("speech_ct", speech, "auto"), ("enwik8_ct", shapes["enwik8_ct"], "auto"),
            ("speech_ct, sdpa", speech, "sdpa")]
    training = training_rows(runs, args, device, (peak_flops, peak_source))
    sampling = sampling_rows(speech, device, n_new)
    nccl = nccl_rows(speech.replace(batch_size=max(speech.batch_size // 2, 1)), args)

    tables = [checks, training, sampling, nccl]
    failed = sum(row[-1] == "**FAILED**" for table in tables for row in table)
    cuda = device.type == "cuda"
    mode = "" if cuda else " (dry run: small shapes)"
    how = ("bf16 autocast, FlexAttention, fused Adam with updates skipped on the device, batches prefetched"
           if cuda else "fp32, SDPA, Adam, one host sync per step (the CPU path)")
    how += " (SDPA where the row says so)" if cuda else ""
    body = [f"## GPU-only paths against their references{mode}", "",
            *markdown_table(["check", "result", "status"], checks), "",
            f"## Compiled training through the trainer{mode}", "",
            f"{how}; torch.compile per block (backend {args.compile_backend}); TF32 "
            f"{'off' if args.no_tf32 or not cuda else 'on'}; synthetic data, vocabulary 256. Warm-up to full "
            f"memories (compiling included), then {args.steps} timed steps, synchronised. MFU = tokens/s × "
            f"(6·N + 12·L·D·K) ÷ peak, peak: {peak_source}. Status: finite loss, no update skipped, no graph "
            "compiled after warm-up, finite weights.", "",
            *markdown_table(["shape", "lanes", "tokens/s", "MFU", "peak GiB", "ms/step", "warm-up s",
                             "graphs compiled after warm-up", "status"], training), "",
            f"## Audio sampling, {speech.describe()}, {speech.sample_rate} Hz{mode}", "",
            f"{n_new} new samples per stream after one priming sample"
            f"{', bf16 autocast, decoding steps replayed from a CUDA graph' if cuda else ''}; RTF = samples of all "
            "streams per second ÷ the sample rate (≥ 1: faster than real time).", "",
            *markdown_table(["batch", "samples/s", "RTF (all streams)", "ms per sample step", "status"], sampling),
            "", "## Two processes over NCCL", "",
            *markdown_table(["tokens/s (both ranks)", "ms/step", "same weights on both ranks", "status"], nccl), "",
            f"Total time: {time.perf_counter() - began:.0f} s. "
            + ("All parts passed." if not failed else f"**{failed} part(s) failed** (tracebacks on stderr).")]
    header = environment_header("bench.gpu_check", device) + [
        f"- CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)" if device.type == "cuda"
        else "- dry run on the CPU"]
    text = "\n".join([f"# GPU check{mode}", "", *header, "", *body, ""])
    print(text)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"gpu_{hardware_tag(device, torch.get_num_threads())}_{dt.date.today():%Y%m%d}.md"
        path.write_text(text)
        print(f"[gpu_check] wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
