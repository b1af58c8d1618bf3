"""Sampling speed: text tokens/s at batch 1, per-token latency inside a
segment, the memory-bandwidth bound, and audio samples/s with the real-time
factor.

- Text (shape S, vocabulary 256, batch 1): 512 new tokens after a 256-token
  prompt with our cached :func:`ct_core.model.sampling.generate`, with each peer's
  own ``generate``, and with a full-recompute reference of ours (every new
  token recomputes the whole history segment by segment with the training
  forward; timed at a few positions spread over the 512 and reported per
  token). The reference's logits are compared with the cache's.
- Per-token latency by position inside a segment (should be flat), from
  :class:`ct_core.model.sampling.IncrementalDecoder` one token at a time.
- Memory-bandwidth bound of batch-1 decoding: weight bytes per token ÷ the
  copy bandwidth measured in the same run.
- Audio: the demo model (recipe audio/demo, 8 kHz) and the speech_ct shape
  (24 kHz) at batch 1, 16, 64; real-time factor = seconds of audio produced
  per wall-clock second, all streams together (≥ 1: faster than real time);
  targets for the demo model: ≥ 0.25 at batch 1, ≥ 1 at batch 16.

Our decoder runs its fixed-shape step compiled with inductor (``--compile
on``, the default here; compiled during the warm-up, never timed), or as
``ct-sample`` would decide (``auto``) or eagerly (``off``); ``--kv-dtype
bf16`` measures the opt-in bf16 key/value cache.

    python -m bench.sampling_speed            # ~6 min on 2 CPU cores (shape S)
    python -m bench.sampling_speed --quick    # shorter: 1 round, fewer tokens
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.peaks import allow_tf32, measure_copy_bandwidth
from bench.report import SHARED_CPU_NOTE, environment_header, fmt, markdown_table, write_results
from bench.shapes import get_shape
from bench.timing import (QUIET_SHARE, cpu_seconds, interleaved_windows, median, others_share, set_wait_budget, sync,
                          timed, wait_for_quiet)
from bench.peers import TOP_K, build_available
from ct_core.model.decode_step import MAX_CHUNK

TEXT_CONTENDERS = ["ours", "ctp", "xtransformers"]  # ctp-trainable samples exactly like ctp
#: "Flat": the fitted per-token cost changes by at most this much across a
#: segment. Attention reads n_cm + n_m + s keys at position s, so some growth
#: is inherent; a recomputing decoder grows by a factor of about n_s instead.
FLAT_GROWTH = 0.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="S", help="text shape (S, M or a recipe name)")
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--tokens", type=int, default=512, help="new text tokens per generate call")
    p.add_argument("--rounds", type=int, default=2, help="interleaved generate calls per contender")
    p.add_argument("--reference-positions", type=int, default=6, help="tokens timed for the full recompute")
    p.add_argument("--audio-tokens", type=int, default=512, help="samples per stream for the demo model")
    p.add_argument("--speech-tokens", type=int, default=128, help="samples per stream for speech_ct")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast while sampling (CUDA only), as ct-sample runs")
    p.add_argument("--compile", choices=("on", "off", "auto"), default="on",
                   help="compile our CPU decoding step with inductor (compiled in the warm-up, before any timing); "
                   "auto: as ct-sample decides by the request's size")
    p.add_argument("--kv-dtype", choices=("auto", "bf16"), default="auto",
                   help="our key/value cache dtype (bf16: opt-in, changes the numbers slightly)")
    p.add_argument("--tf32", action="store_true", help="TF32 tensor cores for fp32 matmuls (CUDA only)")
    p.add_argument("--max-wait", type=float, default=20.0,
                   help="seconds each timed call may wait for other jobs to go quiet (0: never wait)")
    p.add_argument("--wait-budget", type=float, default=300.0, help="total seconds all waits may take")
    p.add_argument("--quick", action="store_true", help="1 round, 256 text tokens, 64 speech samples")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    args.compile_step = {"on": True, "off": False, "auto": None}[args.compile]
    args.kv = torch.bfloat16 if args.kv_dtype == "bf16" else None
    if args.quick:
        args.rounds, args.tokens, args.speech_tokens, args.reference_positions = 1, 256, 64, 4
    if args.bf16 and not args.device.startswith("cuda"):
        p.error("--bf16 is for CUDA: CPU sampling runs in fp32, as ct-sample does")
    return args


# -------------------------------------------------------------------- text
@torch.inference_mode()
def recompute_last_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """The reference: logits after ``tokens`` ``[1, n]`` from the training
    forward run over the whole history, segment by segment, memory carried."""
    memory, seq_len = None, model.cfg.seq_len
    for start in range(0, tokens.shape[1], seq_len):
        out = model(tokens[:, start : start + seq_len], memory)
        memory = out.memory
    return out.logits[0, -1]


@torch.inference_mode()
def per_position_pass(model, seq: torch.Tensor, prompt: int, check: set[int], max_wait: float, args: argparse.Namespace,
                      chunk: int = 32) -> tuple[list, dict[int, torch.Tensor]]:
    """Feed ``seq`` ``[1, n]`` one token at a time after the prompt, in
    chunks that each start in a quiet spell.

    Returns ``(segment position, seconds, rolled, chunk quiet)`` per token
    and the cached logits at the stream indices in ``check``.
    """
    from ct_core.model.sampling import IncrementalDecoder

    dec = IncrementalDecoder(model, 1, compile_backend="inductor" if args.compile_step else None, kv_dtype=args.kv)
    dec.feed(seq[:, :prompt])
    records, logits = [], {}
    warm = dec.feed(seq[:, prompt : prompt + 1])  # compiles the step (when asked) before any timing
    if prompt in check:
        logits[prompt] = warm[0, -1].clone()
    prompt += 1
    device = seq.device
    for first in range(prompt, seq.shape[1], chunk):
        wait_for_quiet(max_wait)
        before, t0, part = cpu_seconds(), time.perf_counter(), []
        for i in range(first, min(first + chunk, seq.shape[1])):
            pos = dec.pos
            sync(device)
            start = time.perf_counter()
            out = dec.feed(seq[:, i : i + 1])
            sync(device)
            part.append((pos, time.perf_counter() - start, dec.pos == 0))
            if i in check:
                logits[i] = out[0, -1].clone()
        quiet = others_share(before, cpu_seconds(), time.perf_counter() - t0) < QUIET_SHARE
        records += [(*r, quiet) for r in part]
    return records, logits


def decode_weight_bytes(model) -> tuple[int, int]:
    """(bytes of weights read per decoded token, bytes of the key/value cache
    read per token at batch 1, averaged over a segment). Position
    projections are computed once per decoder and compressors run once per
    segment, so neither is read per token; the embedding contributes a row."""
    cfg = model.cfg
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                  if n.startswith(("blocks.", "head.", "norm_out.")) and ".w_r." not in n)
    weights += cfg.d_model * model.embed.weight.element_size()
    mean_keys = cfg.cmem_len + cfg.mem_len + cfg.seq_len / 2
    cache = int(cfg.n_layers * 2 * mean_keys * cfg.d_model * model.embed.weight.element_size())
    return weights, cache


def text_section(args: argparse.Namespace, device: torch.device) -> tuple[list[str], dict]:
    shape = get_shape(args.shape).replace(batch_size=1)
    print(f"[sampling] text, {shape.describe()}")
    contenders, skipped = build_available(TEXT_CONTENDERS, shape, device)
    for c in contenders:
        if c.name == "ours":
            c.decoding = {"compile": args.compile_step, "kv_dtype": args.kv}
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, shape.vocab_size, (1, args.prompt), generator=gen).to(device)
    outputs: dict[str, torch.Tensor] = {}

    def task(c):
        def run() -> None:
            torch.manual_seed(0)
            outputs[c.name] = c.generate(prompt, args.tokens)
        return run

    for c in contenders:  # warm-up: first calls allocate and pick kernels (ours: compiles a chunk's step)
        c.generate(prompt[:, :8], 2 * MAX_CHUNK)
    windows = interleaved_windows({c.name: task(c) for c in contenders}, args.rounds, 1, device, args.max_wait)
    for c in contenders:  # a decoder with no quiet call gets one more (gated) try
        if not any(w.quiet for w in windows[c.name]):
            windows[c.name] += interleaved_windows({c.name: task(c)}, 1, 1, device, args.max_wait)[c.name]
    # Generate calls last seconds to a minute, longer than most quiet spells:
    # use the quiet calls when every decoder had one, else all calls.
    use_quiet = all(any(w.quiet for w in ws) for ws in windows.values())
    rate = {n: median([args.tokens / w.seconds for w in ws if w.quiet or not use_quiet]) for n, ws in windows.items()}

    ours = next(c for c in contenders if c.name == "ours").model.eval()
    seq = outputs["ours"][:, : args.prompt + args.tokens]
    n = seq.shape[1]
    check = {int(x) for x in torch.linspace(args.prompt, n - 1, args.reference_positions).round().tolist()}
    bandwidth = [measure_copy_bandwidth(device, max_wait=args.max_wait)]
    records, cached = per_position_pass(ours, seq, args.prompt, check, args.max_wait, args)
    bandwidth.append(measure_copy_bandwidth(device, max_wait=args.max_wait))
    ref_times, ref_others, max_diff = [], [], 0.0
    for i in sorted(check):
        wait_for_quiet(args.max_wait)
        before = cpu_seconds()
        seconds, ref = timed(lambda: recompute_last_logits(ours, seq[:, : i + 1]), device)
        ref_times.append(seconds)
        ref_others.append(others_share(before, cpu_seconds(), seconds))
        max_diff = max(max_diff, (ref - cached[i]).abs().max().item())
    rate["reference (full recompute)"] = 1.0 / (sum(ref_times) / len(ref_times))

    rows = []
    for name, r in rate.items():
        shares = [w.others for w in windows[name]] if name in windows else ref_others
        ratio = "—" if name == "ours" else f"{rate['ours'] / r:.1f}×"
        rows.append([name, fmt(r), f"{1000 / r:.1f}", ratio, ", ".join(f"{x:.0%}" for x in shares)])
    lines = [f"## Text generation, batch 1: {shape.describe()}", "",
             f"{args.tokens} new tokens after a {args.prompt}-token prompt, top-k {TOP_K} sampling; tokens/s = new "
             f"tokens ÷ wall time of the whole generate call (prompt included), median over "
             f"{'the quiet calls' if use_quiet else 'all calls'} of {args.rounds} interleaved calls per decoder "
             f"(one more for a decoder without a quiet call). "
             f"The reference is timed at {len(ref_times)} positions spread evenly over the new tokens (mean per "
             f"token).", "",
             *markdown_table(["decoder", "tokens/s", "ms/token", "ours is … faster",
                              "CPU share of other jobs during each call"], rows),
             "", f"- cached vs full-recompute logits at those positions: max |Δ| = {max_diff:.2e}",
             *[f"- {c.name}: {c.note}" for c in contenders], *[f"- {s}" for s in skipped]]
    summary = {"rate": rate, "records": records, "bandwidth": median(bandwidth), "bytes": decode_weight_bytes(ours),
               "seq_len": shape.seq_len, "max_diff": max_diff}
    return lines, summary


def trend_growth(centres: list[float], values: list[float], span: float) -> float:
    """Relative change across ``span`` positions of the least-squares line
    through ``values`` at ``centres``: 0 for a flat cost, 1 for a doubling."""
    n = len(values)
    mx, my = sum(centres) / n, sum(values) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(centres, values)) / sum((x - mx) ** 2 for x in centres)
    start = my + slope * (0 - mx)
    return slope * span / start


def latency_section(summary: dict) -> tuple[list[str], float]:
    """Per-position latency table and the bandwidth bound; returns the
    fitted growth of the per-token cost across a segment."""
    records, seq_len = summary["records"], summary["seq_len"]
    quiet = [r for r in records if r[3]]
    use_quiet = len(quiet) >= len(records) // 2
    records = quiet if use_quiet else records
    bins = 8
    width = seq_len // bins
    rows, medians, centres = [], [], []
    for b in range(bins):
        ms = [s * 1000 for pos, s, rolled, _ in records if b * width <= pos < (b + 1) * width and not rolled]
        if ms:
            medians.append(median(ms))
            centres.append((b + 0.5) * width)
            rows.append([f"{b * width}–{(b + 1) * width - 1}", len(ms), f"{median(ms):.2f}", f"{min(ms):.2f}"])
    rolled = [s * 1000 for _, s, r, _ in records if r]
    if rolled:
        rows.append([f"{seq_len - 1} + segment update", len(rolled), f"{median(rolled):.2f}", f"{min(rolled):.2f}"])
    growth = trend_growth(centres, medians, seq_len - 1)
    steady = median([s for _, s, r, _ in records if not r])
    weights, cache = summary["bytes"]
    bw = summary["bandwidth"]
    bound, bound_cache = bw * 1e9 / weights, bw * 1e9 / (weights + cache)
    lines = ["## Per-token latency by position inside a segment (ours, batch 1)", "",
             f"{len(records)} tokens ({'those fed in quiet chunks of 32' if use_quiet else 'all, too few were quiet'}) "
             f"fed one at a time after the prompt; median and fastest ms per token in bins "
             f"of {width} positions; the last token of a segment also runs Algorithm 1 and projects the new "
             f"memories' keys/values (shown apart).", "",
             *markdown_table(["position in segment", "tokens", "median ms", "min ms"], rows), "",
             f"- trend: a least-squares line through the bin medians changes by {growth:+.0%} from the first to "
             f"the last position of a segment ({'flat' if abs(growth) <= FLAT_GROWTH else 'not flat'} by the "
             f"±{FLAT_GROWTH:.0%} criterion); slowest / fastest bin median = {max(medians) / min(medians):.2f} "
             f"(noise included)",
             "", "## Memory-bandwidth bound of batch-1 decoding (ours)", "",
             f"- weights read per token: {weights / 2**20:.1f} MiB; key/value cache read per token (mean over a "
             f"segment): {cache / 2**20:.1f} MiB",
             f"- copy bandwidth measured around the latency pass: {bw:.1f} GB/s (read + write)",
             f"- bound from weights alone: {fmt(bound)} tokens/s; with the cache: {fmt(bound_cache)} tokens/s",
             f"- achieved: {fmt(1 / steady)} tokens/s in steady state (median per-token latency) = "
             f"{(1 / steady) / bound:.0%} of the weights-only bound; end to end with generate: "
             f"{fmt(summary['rate']['ours'])} tokens/s = {summary['rate']['ours'] / bound:.0%}"]
    return lines, growth


# ------------------------------------------------------------------- audio
def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def decoder_bytes(shape, batch: int, rolls: bool) -> int:
    """Rough resident size of a decoder: key/value cache, segment hidden
    states, memories (old and new while a segment rolls), 4-byte floats."""
    memories = (2 if rolls else 1) * (shape.mem_len + shape.cmem_len)
    return 4 * batch * shape.n_layers * shape.d_model * (2 * shape.n_keys + shape.seq_len + memories)


def audio_section(args: argparse.Namespace, device: torch.device) -> tuple[list[str], dict]:
    from ct_core.model.lm import CompressiveTransformerLM
    from ct_core.model.memory import MemoryState
    from ct_core.model.sampling import IncrementalDecoder, generate

    lines, rtf = [], {}
    for name, n_new in (("demo", args.audio_tokens), ("speech_ct", args.speech_tokens)):
        shape = get_shape(name)
        torch.manual_seed(0)
        model = CompressiveTransformerLM(shape.model_config()).to(device).eval()
        rows = []
        for batch in args.batches:
            need = decoder_bytes(shape, batch, rolls=n_new >= shape.seq_len)
            if need > 0.7 * available_bytes():
                rows.append([batch, "skipped", f"needs ~{need / 2**30:.1f} GiB", "", "", "", ""])
                continue
            print(f"[sampling] audio {name} batch {batch}")
            start = torch.full((batch, 1), 128, dtype=torch.long, device=device)  # μ-law code of silence
            decoding = {"compile": args.compile_step, "kv_dtype": args.kv}
            # Memories full from the first sample, as in a long sample: every
            # step attends to all of them (an empty start would attend fewer).
            empty = model.empty_memory(batch)
            full = MemoryState(empty.mem, torch.ones_like(empty.mem_mask), empty.cmem,
                               torch.ones_like(empty.cmem_mask))
            generate(model, start, 2 * MAX_CHUNK, memory=full, **decoding)  # warm-up: compiles when asked
            calls = interleaved_windows({"generate": lambda: generate(model, start, n_new, memory=full, **decoding)},
                                        args.rounds if name == "demo" else 1, 1, device, args.max_wait)["generate"]
            seconds = median([w.seconds for w in calls if w.quiet] or [w.seconds for w in calls])
            # Segment start (memory keys/values of every layer) measured apart,
            # so a run shorter than a segment can be amortised over a whole segment.
            wait_for_quiet(args.max_wait)
            seg_start = min(timed(lambda: IncrementalDecoder(model, batch, full, kv_dtype=args.kv), device)[0]
                            for _ in range(2 if name == "demo" else 1))
            # The decoder's own start, then one per segment rolled.
            starts = 1 + n_new // shape.seq_len
            per_token = max(seconds - starts * seg_start, 1e-9) / n_new
            amortised = batch * shape.seq_len / (shape.seq_len * per_token + seg_start)
            measured = batch * n_new / seconds
            rtf[(name, batch)] = amortised / shape.sample_rate
            rows.append([batch, fmt(measured), fmt(amortised), f"{amortised / shape.sample_rate:.3g}",
                         f"{amortised / shape.sample_rate / batch:.3g}", f"{seg_start * 1000:,.0f}",
                         ", ".join(f"{w.others:.0%}" for w in calls)])
        lines += [f"## Audio sampling: {shape.describe()}, {shape.sample_rate} Hz", "",
                  f"{n_new} new samples per stream after one priming sample, memories full from the start "
                  f"(median of "
                  f"{args.rounds if name == 'demo' else 1} call(s), quiet ones when there are). "
                  f"'measured' = all streams' samples ÷ wall time of generate; 'per segment' amortises the "
                  f"segment start over a full {shape.seq_len}-sample segment (what a long sample sees); RTF = "
                  f"seconds of audio per wall-clock second from the per-segment rate.", "",
                  *markdown_table(["batch", "samples/s measured", "samples/s per segment", "RTF (all streams)",
                                   "RTF per stream", "segment start ms", "other jobs' CPU share"], rows), ""]
    return lines, rtf


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    set_wait_budget(args.wait_budget)
    device = torch.device(args.device)
    allow_tf32(args.tf32)
    header = environment_header("bench.sampling_speed", device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
        text_lines, summary = text_section(args, device)
        latency_lines, growth = latency_section(summary)
        audio_lines, rtf = audio_section(args, device)
    rate = summary["rate"]
    weights, _ = summary["bytes"]
    bound = summary["bandwidth"] * 1e9 / weights
    targets = ["## Targets", ""]
    for peer, need in (("ctp", 10.0), ("xtransformers", 8.0)):
        if peer in rate:
            r = rate["ours"] / rate[peer]
            targets.append(f"- text batch 1: ours / {peer} = {r:.1f}× (target ≥ {need:.0f}×): "
                           f"{'met' if r >= need else 'not met'}")
    targets.append(f"- per-token cost flat within a segment: fitted change across a segment {growth:+.0%} "
                   f"(criterion ±{FLAT_GROWTH:.0%}): {'met' if abs(growth) <= FLAT_GROWTH else 'not met'}")
    targets.append(f"- batch-1 decoding reaches {rate['ours'] / bound:.0%} of the weight-bandwidth bound "
                   f"({fmt(bound)} tokens/s); reported, no target")
    for batch, need in ((1, 0.25), (16, 1.0)):
        if ("demo", batch) in rtf:
            r = rtf[("demo", batch)]
            targets.append(f"- demo model at batch {batch}: real-time factor {r:.3g} (target ≥ {need}): "
                           f"{'met' if r >= need else 'not met'}")
    body = [*text_lines, "", *latency_lines, "", *audio_lines, *targets, "", "## Notes", "",
            *([SHARED_CPU_NOTE, ""] if device.type == "cpu" else []),
            "Generate calls are timed whole; each waits for a quiet spell before it starts and the other jobs' CPU "
            "share during the call is listed. Weights are random (untrained): speed does not depend on them.", "",
            "Orientation numbers from the issue (earlier, same machine), shape M, batch 1: "
            "compressive-transformer-pytorch ≈ 9 tokens/s, x-transformers ≈ 28 tokens/s."]
    print("\n".join(body))
    if not args.no_write:
        path = write_results("sampling_speed", device, args.threads, "Sampling speed", header, body)
        print(f"[sampling] wrote {path}")


if __name__ == "__main__":
    main()
