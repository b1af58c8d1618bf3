"""Which attention kernel a run trains with: ``trainer.attention_backend``.

``auto`` picks FlexAttention on CUDA, but only after a self-test: a tiny
model of one layer runs three segments (memories filling, full, one row
reset) forward and backward on the run's device, in the run's dtype,
compiled as the run compiles its blocks, once through FlexAttention and
once through SDPA, and the logits and every gradient must agree within the
dtype's tolerance (:data:`TOLERANCES`). Compiled FlexAttention depends on
the torch version more than anything else here (its backward with a
``score_mod`` that reads bf16 position scores needing a gradient has failed
upstream, pytorch#174018), so a failure or a mismatch falls back to SDPA
and says so in one line, with the torch version and the reason. Asked for
explicitly, ``flex`` runs the same self-test and stops the run in one line
when it fails. On a CPU ``auto`` is SDPA, and ``flex`` cannot train at all
(FlexAttention has no CPU backward).

Example::

    choice = choose_attention("auto", torch.device("cuda"), "auto", Execution(compile_backend="inductor"))
    model.set_execution(replace(execution, attention=choice.backend)); print(choice.message)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ct_core.errors import ConfigError
from ct_core.model.config import ModelConfig
from ct_core.model.execution import Execution
from ct_core.model.lm import CompressiveTransformerLM
from ct_core.train.runtime import autocast_context, device_kind, exact_fp32

#: Largest relative error ``|got - want| / |want|`` (Frobenius norms, per
#: tensor) of FlexAttention against SDPA, for the logits and for each
#: gradient, by compute dtype. fp32 runs with TF32 off, where the two
#: kernels differ only in summation order; in bf16 both round every product.
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (2e-2, 5e-2)}

#: A self-test: raises (anything) when FlexAttention cannot be trusted on
#: ``device`` at ``precision`` under ``execution``; returns when it can.
SelfTest = Callable[[torch.device, str, Execution], None]


class FlexMismatch(RuntimeError):
    """FlexAttention ran but disagreed with SDPA."""


@dataclass(frozen=True)
class AttentionChoice:
    backend: str  # sdpa | flex
    message: str | None = None  # one line for the log, when there is something to say


def compute_dtype_of(device: torch.device, precision: str) -> torch.dtype:
    """The dtype a run's matmuls use: bf16 under autocast on CUDA, else fp32."""
    return torch.bfloat16 if device.type == "cuda" and precision in ("auto", "bf16") else torch.float32


@dataclass
class SelfTestRun:
    logits: Tensor  # [B, 3 * T, V] fp32, the three segments side by side
    grads: dict[str, Tensor]  # parameter name -> fp32 gradient summed over the segments


def self_test_model(device: torch.device, head_dim: int = 64) -> CompressiveTransformerLM:
    """One layer of two heads of ``head_dim``: segments of 64 tokens, 64
    memory and 32 compressed slots, non-zero position biases."""
    cfg = ModelConfig(vocab_size=64, n_layers=1, d_model=2 * head_dim, n_heads=2, d_ff=4 * head_dim, seq_len=64,
                      mem_len=64, cmem_len=32, compression_rate=2, compression="mean_pool", compression_loss="none")
    model = CompressiveTransformerLM(cfg).to(device)
    with torch.no_grad():
        for blk in model.blocks:  # so that the position term matters
            blk.attn.u.normal_(0, 0.5)
            blk.attn.v.normal_(0, 0.5)
    return model


def run_segments(model: CompressiveTransformerLM, tokens: Tensor, execution: Execution, precision: str,
                 backward: bool) -> SelfTestRun:
    """Three segments of ``tokens`` ``[B, 3 * T + 1]`` with carried memory,
    row 1 reset before the third; each segment's loss backward when
    ``backward``."""
    model.set_execution(execution)
    model.zero_grad(set_to_none=True)
    t = model.cfg.seq_len
    reset = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    reset[1] = True
    memory, logits = None, []
    with torch.set_grad_enabled(backward):
        for s in range(3):
            with autocast_context(tokens.device, precision):
                out = model(tokens[:, s * t : (s + 1) * t], memory, reset if s == 2 else None)
                loss = F.cross_entropy(out.logits.float().flatten(0, 1), tokens[:, s * t + 1 : (s + 1) * t + 1].flatten())
            if backward:
                loss.backward()
            memory, logits = out.memory, logits + [out.logits.detach().float()]
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return SelfTestRun(torch.cat(logits, dim=1), grads)


def relative_error(got: Tensor, want: Tensor) -> float:
    return ((got - want).norm() / want.norm().clamp(min=1e-12)).item()


def disagreement(got: SelfTestRun, want: SelfTestRun, dtype: torch.dtype) -> str | None:
    """What differs beyond :data:`TOLERANCES` (the worst tensor), or None."""
    logits_tol, grad_tol = TOLERANCES[dtype]
    err = relative_error(got.logits, want.logits)
    if not err <= logits_tol:  # NaN fails too
        return f"logits differ from SDPA's by {err:.2e} (relative; tolerance {logits_tol:g})"
    if got.grads.keys() != want.grads.keys():
        missing = sorted(want.grads.keys() ^ got.grads.keys())
        return f"gradients of {', '.join(missing)} are missing on one side"
    errors = {name: relative_error(got.grads[name], g) for name, g in want.grads.items()}
    bad = [name for name, err in errors.items() if not err <= grad_tol]  # NaN is bad too
    if bad:
        worst = max(bad, key=lambda name: errors[name] if errors[name] == errors[name] else float("inf"))
        return f"the gradient of {worst} differs from SDPA's by {errors[worst]:.2e} (relative; tolerance {grad_tol:g})"
    return None


def flex_self_test(device: torch.device, precision: str, execution: Execution, backward: bool = True,
                   head_dim: int = 64) -> None:
    """Raise :class:`FlexMismatch` when FlexAttention, run as ``execution``
    runs it, disagrees with SDPA on :func:`self_test_model` (whatever the
    compiler or kernel raises passes through). The global RNG states are
    left as they were, so a run trains the same whether this ran or not.
    ``backward=False`` compares logits alone (FlexAttention has no CPU
    backward)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), exact_fp32():
        torch.manual_seed(0)
        model = self_test_model(device, head_dim)
        tokens = torch.randint(0, 64, (2, 3 * model.cfg.seq_len + 1), device=device)
        want = run_segments(model, tokens, replace(execution, attention="sdpa", compile_backend=None), precision,
                            backward)
        got = run_segments(model, tokens, replace(execution, attention="flex"), precision, backward)
    problem = disagreement(got, want, compute_dtype_of(device, precision))
    if problem:
        raise FlexMismatch(problem)


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


def refuse_flex_on_cpu(requested: str, device: str, option: str = "trainer.attention_backend") -> None:
    """One-line :class:`ConfigError` for training with FlexAttention on a CPU
    (``device``: how the run names it, ``auto`` included)."""
    if requested == "flex" and device_kind(device) == "cpu":
        raise ConfigError(f"{option}=flex cannot train on a CPU (FlexAttention has no CPU backward); "
                          f"use {option}=auto or sdpa")


def choose_attention(requested: str, device: torch.device, precision: str, execution: Execution,
                     self_test: SelfTest = flex_self_test, agree: Callable[[bool], bool] = bool,
                     option: str = "trainer.attention_backend") -> AttentionChoice:
    """The backend a training run on ``device`` uses for ``requested``
    (``auto``, ``sdpa`` or ``flex``). ``self_test`` decides whether
    FlexAttention can be trusted (:func:`flex_self_test`); ``agree`` turns
    this process's verdict into every rank's (under torchrun: true only if
    it passed on all of them), so that all ranks pick the same kernel."""
    if requested == "sdpa":
        return AttentionChoice("sdpa")
    refuse_flex_on_cpu(requested, device.type, option)
    if device.type != "cuda":
        return AttentionChoice("sdpa")
    reason = None
    try:
        self_test(device, precision, replace(execution, attention="flex"))
    except Exception as err:  # noqa: BLE001 - whatever the compiler or the kernel raises
        reason = one_line(err)
    if not agree(reason is None) and reason is None:
        reason = "it failed on another rank"
    if reason is None:
        return AttentionChoice("flex", f"attention: FlexAttention (its self-test against SDPA passed with torch "
                                       f"{torch.__version__})")
    if requested == "flex":
        raise ConfigError(f"{option}=flex: FlexAttention failed its self-test on {device} with torch "
                          f"{torch.__version__} ({reason}); use {option}=sdpa")
    return AttentionChoice("sdpa", f"attention: SDPA, since FlexAttention failed its self-test with torch "
                                   f"{torch.__version__} ({reason})")
