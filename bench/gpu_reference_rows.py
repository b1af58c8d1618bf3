"""Rows of ``bench.gpu_check`` that hold a GPU-only path against its
reference: FlexAttention against SDPA (fp32, then bf16 compiled), and
CUDA-graph decoding against eager decoding over 500 greedy tokens (fp32 and
bf16). Comparisons in fp32 run with TF32 off (:func:`exact_fp32`), so that
a tolerance meant for summation order is not spent on TF32's rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.gpu_context import CheckContext, Outcome
from ct_core.model.execution import Execution
from ct_core.train.attention_backend import TOLERANCES, disagreement, relative_error, run_segments, self_test_model
from ct_core.train.runtime import autocast_context, exact_fp32

#: Largest top-1 minus top-2 logit gap of the eager decoder at which two
#: decoders may pick different greedy tokens (a near tie, decided by rounding).
NEAR_TIE = {torch.float32: 1e-3, torch.bfloat16: 0.1}


# ------------------------------------------------------------ FlexAttention
def flex_row(ctx: CheckContext, precision: str) -> Outcome:
    """FlexAttention (compiled as training compiles it) against eager SDPA on
    the self-test's model: three segments, memories filling, full and one
    row reset; logits, losses and every gradient."""
    if precision == "bf16" and not ctx.cuda:
        return Outcome(None, "needs CUDA (bf16 autocast runs on CUDA only)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    backward = ctx.cuda  # FlexAttention has no CPU backward
    with exact_fp32():
        torch.manual_seed(0)
        model = self_test_model(ctx.device)
        tokens = torch.randint(0, 64, (2, 3 * model.cfg.seq_len + 1), device=ctx.device)
        # On a CPU the kernel is compiled on its own: the blocks would need inductor's C++ path twice.
        compiled = ctx.compile_backend if ctx.cuda else None
        want = run_segments(model, tokens, Execution(), precision, backward)
        got = run_segments(model, tokens, Execution(attention="flex", compile_backend=compiled), precision, backward)
    targets = torch.cat([tokens[:, s * 64 + 1 : (s + 1) * 64 + 1] for s in range(3)], dim=1).flatten()
    loss_want = F.cross_entropy(want.logits.flatten(0, 1), targets).item()
    loss_got = F.cross_entropy(got.logits.flatten(0, 1), targets).item()
    worst_grad = max((relative_error(got.grads[n], g) for n, g in want.grads.items() if n in got.grads), default=0.0)
    problem = disagreement(got, want, dtype)
    logits_tol, grad_tol = TOLERANCES[dtype]
    summary = (f"logits rel. error {relative_error(got.logits, want.logits):.1e} (tol {logits_tol:g}); "
               f"loss {loss_got:.5f} vs {loss_want:.5f}; ")
    summary += (f"worst gradient rel. error {worst_grad:.1e} (tol {grad_tol:g})" if backward
                else "forward only (no FlexAttention backward on a CPU)")
    if problem:
        summary = f"{problem}; {summary}"
    return Outcome(problem is None, summary,
                   {"logits_rel_error": relative_error(got.logits, want.logits), "loss_flex": loss_got,
                    "loss_sdpa": loss_want, "worst_grad_rel_error": worst_grad if backward else None,
                    "compile_backend": compiled})


# ----------------------------------------------------------------- decoding
def decoding_model(device: torch.device):
    """Two layers, segments of 128 so that 500 tokens roll the memories three
    times (compression included); a sharpened output head, so that greedy
    choices are rarely near ties."""
    from ct_core.model.config import ModelConfig
    from ct_core.model.lm import CompressiveTransformerLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, n_layers=2, d_model=128, n_heads=2, d_ff=256, seq_len=128, mem_len=128,
                      cmem_len=64, compression_rate=4, compression="conv", compression_loss="attention")
    model = CompressiveTransformerLM(cfg).to(device).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.u.normal_(0, 0.5)
            blk.attn.v.normal_(0, 0.5)
        model.head.weight.mul_(50.0)
    return model


def greedy(model, prompt: torch.Tensor, n: int, fixed_shape: bool | None, precision: str):
    """``n`` greedy tokens ``[B, n]``, the logits they were chosen from
    ``[B, n, V]`` (fp32) through one decoder."""
    from ct_core.model.sampling import IncrementalDecoder

    with autocast_context(prompt.device, precision), torch.inference_mode():
        dec = IncrementalDecoder(model, prompt.shape[0], fixed_shape=fixed_shape)
        logits = dec.feed(prompt)[:, -1]
        tokens, seen = [], []
        for i in range(n):
            seen.append(logits.float())
            tokens.append(logits.argmax(dim=-1))
            if i + 1 < n:
                logits = dec.feed(tokens[-1][:, None])[:, -1]
    return torch.stack(tokens, dim=1), torch.stack(seen, dim=1)


def decoding_row(ctx: CheckContext, precision: str, n_tokens: int = 500) -> Outcome:
    """CUDA-graph decoding (fixed-shape steps replayed from a graph; on a
    CPU the same steps run eagerly) against the eager variable-shape path:
    four streams of ``n_tokens`` greedy tokens must agree token for token,
    except where the eager decoder's top two logits were a near tie."""
    if precision == "bf16" and not ctx.cuda:
        return Outcome(None, "needs CUDA (bf16 autocast runs on CUDA only)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with exact_fp32():
        model = decoding_model(ctx.device)
        prompt = torch.randint(0, 256, (4, 5), generator=torch.Generator().manual_seed(2)).to(ctx.device)
        want, want_logits = greedy(model, prompt, n_tokens, False, precision)
        got, got_logits = greedy(model, prompt, n_tokens, None if ctx.cuda else True, precision)
    differs = (want != got)  # [B, n]
    first = [int(row.nonzero()[0]) if row.any() else n_tokens for row in differs.cpu()]
    common = min(first)
    max_diff = (got_logits[:, :common] - want_logits[:, :common]).abs().max().item() if common else 0.0
    top2 = want_logits.topk(2, dim=-1).values  # [B, n, 2]
    margins = [float(top2[b, i, 0] - top2[b, i, 1]) if i < n_tokens else None for b, i in enumerate(first)]
    ties = [m is None or m <= NEAR_TIE[dtype] for m in margins]
    agree = sum(first)
    what = "CUDA graph" if ctx.cuda else "fixed-shape (eager on a CPU)"
    summary = (f"{what} vs eager: {agree}/{4 * n_tokens} tokens agree before any divergence; "
               f"max logit |Δ| before it {max_diff:.1e}")
    diverged = [f"stream {b} at token {i} (top-2 gap {m:.1e})" for b, (i, m) in enumerate(zip(first, margins))
                if m is not None]
    if diverged:
        summary += f"; diverged: {', '.join(diverged)}, near-tie bound {NEAR_TIE[dtype]:g}"
    return Outcome(all(ties), summary, {"tokens_agreeing": agree, "tokens": 4 * n_tokens,
                                        "first_divergence": first, "divergence_gap": margins,
                                        "max_logit_diff": max_diff})
