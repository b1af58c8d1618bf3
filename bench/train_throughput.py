"""Training throughput: tokens/s of full training steps, ours vs the peers.

A step is what the trainer does: forward one segment per lane with the
memory carried from the previous step, cross entropy + compression loss,
backward, gradient-norm clip, AdamW step, zero the gradients. Every
contender first runs until its memories are full (steady state), then the
contenders and a square GEMM are timed round-robin in windows; rates are
medians over windows and ours/peer ratios are medians of per-round ratios.

MFU = achieved model FLOPs / the GEMM rate of the same round, with model
FLOPs from :func:`bench.shapes.model_flops_per_token` (the same formula for
every contender at a shape). The executed FLOPs of each contender (counted
by ``torch.utils.flop_counter`` on one step: every matmul, convolution and
attention it really runs) give the hardware utilisation beside it.

    python -m bench.train_throughput                       # shapes S and M on CPU (5-10 min on 2 cores)
    python -m bench.train_throughput --shape speech_ct --device cuda --bf16 --compile
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.peaks import allow_tf32, bf16_peak_flops, gemm_calls, gemm_task, measure_gemm_peak
from bench.report import SHARED_CPU_NOTE, environment_header, fmt, markdown_table, write_results
from bench.shapes import Shape, get_shape, matmul_parameters, model_flops_per_token
from bench.timing import Window, interleaved_windows, median, set_wait_budget, timed
from bench.peers import NAMES, Contender, build_available

#: Peers whose every weight is trained, the fair comparison for the targets.
TRAINABLE_PEERS = ("ctp-trainable", "xtransformers")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward"}


def paired(windows: dict[str, list[Window]], names: Sequence[str], min_rounds: int = 3) -> tuple[list[int], bool]:
    """Indices of the rounds in which every task in ``names`` ran quiet, and
    whether that filter was used (it is dropped when fewer than
    ``min_rounds`` rounds were quiet, so that there is always an answer)."""
    rounds = range(len(windows[names[0]]))
    quiet = [r for r in rounds if all(windows[n][r].quiet for n in names)]
    return (quiet, True) if len(quiet) >= min_rounds else (list(rounds), False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", nargs="+", default=["S", "M"], help="S, M or a recipe name (speech_ct, enwik8_ct, ...)")
    p.add_argument("--contenders", nargs="+", default=list(NAMES), choices=NAMES)
    p.add_argument("--batch", type=int, default=None, help="override the shape's batch size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only), as the GPU recipes train")
    p.add_argument("--tf32", action="store_true", help="TF32 tensor cores for what stays fp32 (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile every contender's model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="timed windows per contender")
    p.add_argument("--window-seconds", type=float, default=1.0, help="aim for windows at least this long")
    p.add_argument("--max-wait", type=float, default=20.0,
                   help="seconds each window may wait for other jobs to go quiet (0: never wait)")
    p.add_argument("--wait-budget", type=float, default=300.0, help="total seconds all waits may take")
    p.add_argument("--quick", action="store_true", help="4 rounds, one step per window")
    p.add_argument("--profile-shape", default="M", help="shape whose step of ours is profiled ('none' to skip)")
    p.add_argument("--no-write", action="store_true", help="print, do not write bench/results")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.window_seconds = 4, 0.0
    if args.bf16 and not args.device.startswith("cuda"):
        p.error("--bf16 is for CUDA: CPU training runs in fp32, as the CPU recipes do")
    return args


def steady_state_steps(shape: Shape) -> int:
    """Segments until every implementation's memories are full: the FIFO
    memory after n_m / n_s segments, the compressed one n_cm·c / n_s later."""
    fifo = math.ceil(shape.mem_len / shape.seq_len)
    compressed = math.ceil(shape.cmem_len * shape.compression_rate / shape.seq_len)
    return fifo + compressed + 1


def make_step(c: Contender, shape: Shape, device: torch.device, bf16: bool) -> Callable[[], None]:
    """One full training step of ``c`` on a fresh random segment per lane."""
    opt = c.optimizer()
    params = [p for p in c.model.parameters()]
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, shape.vocab_size, (shape.batch_size, shape.seq_len + 1), generator=gen).to(device)
               for _ in range(4)]
    i = 0

    def step() -> None:
        nonlocal i
        tokens = batches[i % len(batches)]
        i += 1
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = c.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def executed_flops(step: Callable[[], None], tokens: int) -> float:
    """FLOPs per token one step really executes (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / tokens


def profile_step(step: Callable[[], None], device: torch.device) -> tuple[str, float]:
    """Top-15 ops by self time of one step, and the share of matmul-like ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, key) for e in events)
    matmul = sum(getattr(e, key) for e in events if e.key in MATMUL_OPS)
    return events.table(sort_by=key, row_limit=15, max_name_column_width=60), matmul / max(total, 1e-9)


def bench_shape(shape: Shape, args: argparse.Namespace, device: torch.device) -> tuple[list[str], dict]:
    """Time every contender at ``shape``; markdown lines and a summary."""
    print(f"[train] {shape.describe()}")
    contenders, skipped = build_available(args.contenders, shape, device)
    steps, flops_run, calls = {}, {}, {}
    for c in list(contenders):
        step = make_step(c, shape, device, args.bf16)
        for _ in range(steady_state_steps(shape)):
            step()
        flops_run[c.name] = executed_flops(step, shape.tokens_per_step)
        if args.compile:
            c.forward = torch.compile(c.model)
            try:
                step()  # compile outside the timed windows
            except Exception as err:  # a model torch.compile cannot handle is reported, not fatal
                skipped.append(f"{c.name} skipped: torch.compile failed ({type(err).__name__}: {err})"[:300])
                contenders.remove(c)
                continue
        t_step = median([timed(step, device)[0] for _ in range(2)])
        calls[c.name] = max(1, round(args.window_seconds / t_step))
        steps[c.name] = step
        print(f"[train]   {c.name}: warm, {shape.tokens_per_step / t_step:,.0f} tok/s")
    size, _, _ = measure_gemm_peak(device, torch.bfloat16 if args.bf16 else torch.float32, windows=3)
    gemm, gemm_flops = gemm_task(device, torch.bfloat16 if args.bf16 else torch.float32, size)
    calls["gemm"] = gemm_calls(device, gemm_flops)
    windows = interleaved_windows({**steps, "gemm": gemm}, args.rounds, calls, device, args.max_wait)

    def gflops(w: Window) -> float:
        return gemm_flops * calls["gemm"] / w.seconds / 1e9

    model_flops = model_flops_per_token(shape)
    sheet_peak, sheet_source = bf16_peak_flops(device) if args.bf16 else (None, "")
    rows, summary = [], {"shape": shape.name, "rates": {}, "ratios": {}, "mfu": {}, "executed": dict(flops_run),
                         "executed_share": {}}
    for c in contenders:
        rounds, quiet = paired(windows, [c.name, "gemm"])
        rate = [shape.tokens_per_step * calls[c.name] / windows[c.name][r].seconds for r in rounds]
        peak = [gflops(windows["gemm"][r]) for r in rounds]
        mfu = [x * model_flops / (p * 1e9) for x, p in zip(rate, peak)]
        hfu = [x * flops_run[c.name] / (p * 1e9) for x, p in zip(rate, peak)]
        ratio = "—"
        if c.name != "ours" and "ours" in steps:
            pair, pair_quiet = paired(windows, ["ours", c.name])
            per_round = [windows[c.name][r].seconds / calls[c.name] / (windows["ours"][r].seconds / calls["ours"])
                         for r in pair]
            summary["ratios"][c.name] = median(per_round)
            ratio = (f"{median(per_round):.2f}× ({min(per_round):.2f}–{max(per_round):.2f}; "
                     f"{len(pair)} {'quiet' if pair_quiet else 'all'} rounds)")
        summary["rates"][c.name], summary["mfu"][c.name] = median(rate), median(mfu)
        summary["executed_share"][c.name] = median(hfu)
        rows.append([c.name, f"{fmt(median(rate))} ({fmt(min(rate))}–{fmt(max(rate))})",
                     f"{len(rounds)} {'quiet' if quiet else 'all'}", ratio, f"{median(mfu):.1%}",
                     f"{median(rate) * model_flops / sheet_peak:.1%}" if sheet_peak else "—",
                     f"{flops_run[c.name] / 1e6:.1f}", f"{median(hfu):.1%}", f"{c.parameter_count():,}"])
    peak_all = [gflops(w) for w in windows["gemm"]]
    peak_quiet = [gflops(w) for w in windows["gemm"] if w.quiet] or peak_all
    summary["peak"] = median(peak_quiet)
    n_quiet = {n: sum(w.quiet for w in ws) for n, ws in windows.items()}
    lines = [f"## Shape {shape.describe()}", "",
             f"{shape.tokens_per_step:,} tokens per step; model FLOPs {model_flops / 1e6:.1f} M/token "
             f"(6·N + 12·L·D·K with N = {matmul_parameters(shape):,}, K = {shape.n_keys}); warm-up "
             f"{steady_state_steps(shape)} steps per contender; {args.rounds} rounds. GEMM peak ({size}² "
             f"{'bf16' if args.bf16 else 'fp32'} matmul timed in the same rounds): median {median(peak_quiet):.1f} "
             f"GFLOP/s over quiet windows ({min(peak_all):.1f}–{max(peak_all):.1f} over all). Quiet windows per "
             f"task: {', '.join(f'{n} {k}/{args.rounds}' for n, k in n_quiet.items())}.", "",
             *markdown_table(["contender", "tokens/s median (min–max)", "rounds used", "ours / this (tokens/s)",
                              "MFU", "MFU vs data-sheet bf16 peak", "executed MFLOP/token", "executed / peak",
                              "parameters"], rows)]
    if sheet_peak:
        lines += ["", f"Data-sheet peak: {sheet_source}."]
    lines += ["", *[f"- {c.name}: {c.note}" for c in contenders], *[f"- {s}" for s in skipped]]
    summary["steps"] = steps
    return lines, summary


def targets(summaries: list[dict]) -> list[str]:
    """Met / not met against the issue's targets."""
    lines = ["## Targets", ""]
    for s in summaries:
        peers = {n: s["rates"][n] for n in TRAINABLE_PEERS if n in s["rates"]}
        if "ours" in s["rates"] and peers:
            fastest = max(peers, key=peers.get)
            ratio = s["ratios"][fastest]
            lines.append(f"- {s['shape']}: ours / fastest all-trainable peer ({fastest}) = {ratio:.2f}× "
                         f"(target ≥ 1.0×, doing the paper's full work): {'met' if ratio >= 1.0 else 'not met'}")
        if "ours" in s.get("executed", {}):
            lines.append(f"- {s['shape']}: ours executes {s['executed']['ours'] / 1e6:.1f} MFLOP/token at "
                         f"{s['executed_share']['ours']:.1%} of the measured GEMM peak; reported, no target")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    set_wait_budget(args.wait_budget)
    device = torch.device(args.device)
    allow_tf32(args.tf32)
    header = environment_header("bench.train_throughput", device)
    shapes = [get_shape(n) for n in args.shape]
    if args.batch:
        shapes = [s.replace(batch_size=args.batch) for s in shapes]
    body, summaries = [], []
    for shape in shapes:
        lines, summary = bench_shape(shape, args, device)
        body += [*lines, ""]
        summaries.append(summary)
        print("\n".join(lines))
    body += [*targets(summaries), ""]
    profiled = next((s for s in summaries if s["shape"] == args.profile_shape and "ours" in s["steps"]), None)
    if profiled is not None:
        table, share = profile_step(profiled["steps"]["ours"], device)
        body += [f"## Profile summary: one training step of ours at shape {profiled['shape']}", "",
                 f"torch.profiler, top 15 ops by self time; matmul-like ops (mm, addmm, bmm, convolution, "
                 f"fused attention) take {share:.0%} of all self time.", "", "```", table.strip(), "```", ""]
    body += ["## Notes", "", *([SHARED_CPU_NOTE, ""] if device.type == "cpu" else []),
             "MFU counts model FLOPs only (formula in bench/README.md), identical for every contender at a shape, "
             "so MFU ratios equal throughput ratios. 'executed' counts what each implementation really runs "
             "(ours also re-projects memory keys/values, computes relative-position scores and the "
             "attention-reconstruction loss), so it is higher than the model FLOPs.", "",
             "Orientation numbers from the issue (earlier, same machine, fp32 GEMM peak ≈ 145 GFLOP/s), shape M: "
             "compressive-transformer-pytorch ≈ 400 tokens/s (≈ 50% MFU), "
             "x-transformers ≈ 470 tokens/s (≈ 59%)."]
    if not args.no_write:
        path = write_results("train_throughput", device, args.threads, "Training throughput", header, body)
        print(f"[train] wrote {path}")


if __name__ == "__main__":
    main()
