"""The sampling row of ``bench.gpu_check``: audio at ``speech_ct``'s shape
and 24 kHz, batch 1 and 64, real-time factor of all streams together.

Each batch first samples one segment and a few tokens more, untimed, so
that the decoding step is captured (CUDA graph), its kernels are chosen and
the memory update at a segment's end has run once; then two segments are
timed. RTF = samples of all streams per second ÷ the sample rate (≥ 1:
faster than real time).
"""

from __future__ import annotations

import time

import torch

from bench.gpu_context import CheckContext, Outcome
from bench.timing import sync

AUDIO_BATCHES = (1, 64)


def sampling_row(ctx: CheckContext) -> Outcome:
    from ct_core.model.lm import CompressiveTransformerLM
    from ct_core.model.sampling import generate
    from ct_core.train.runtime import autocast_context

    shape = ctx.speech
    n_new = ctx.args.samples or 2 * shape.seq_len
    torch.manual_seed(0)
    model = CompressiveTransformerLM(shape.model_config()).to(ctx.device).eval()
    values, parts, valid = {}, [], True
    for batch in AUDIO_BATCHES:
        start = torch.full((batch, 1), 128, dtype=torch.long, device=ctx.device)  # μ-law silence
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        with autocast_context(ctx.device, "auto"):
            generate(model, start, shape.seq_len + 4, generator=gen)  # warm-up: capture, kernels, one roll
            sync(ctx.device)
            began = time.perf_counter()
            out = generate(model, start, n_new, generator=gen)
            sync(ctx.device)
        seconds = time.perf_counter() - began
        rate = batch * n_new / seconds
        valid &= out.shape == (batch, 1 + n_new) and bool(((out >= 0) & (out < shape.vocab_size)).all())
        values[f"batch_{batch}"] = {"samples_per_s": rate, "rtf": rate / shape.sample_rate,
                                    "ms_per_step": 1000 * seconds / n_new}
        parts.append(f"batch {batch}: RTF {rate / shape.sample_rate:.3g} ({rate:,.0f} samples/s, "
                     f"{1000 * seconds / n_new:.2f} ms per step)")
    how = "bf16, CUDA graph" if ctx.cuda else "fp32, eager"
    summary = f"{n_new} samples per stream after warm-up, {how}: " + "; ".join(parts)
    if not valid:
        summary = "samples out of range or of the wrong shape; " + summary
    return Outcome(valid, summary, values)
