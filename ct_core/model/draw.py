"""Drawing the next token from scores: temperature, top-k, top-p and the
exponential race.

:func:`draw` is the rule; its noise is an argument, so that a compiled or
captured decoding step (:mod:`ct_core.model.decode_step`) can run the rule
on noise drawn just before it, from the caller's generator, with the same
shape and therefore the same numbers as :func:`sample_next` draws. The
distribution is exact either way: the race ``argmax(p / E)`` with
``E ~ Exp(1)`` draws from ``p``.

Example::

    opts = SamplingOptions(temperature=0.9, top_p=0.95)
    nxt = sample_next(logits, **opts.kwargs(), generator=g)     # [B]
    noise = torch.empty(B, V).exponential_(generator=g)
    nxt = draw(logits, noise, opts)                             # the same rule
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingOptions:
    """``temperature = 0`` or ``top_k = 1`` is greedy (no noise is drawn)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1

    def kwargs(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


def draw(logits: Tensor, noise: Tensor | None, options: SamplingOptions) -> Tensor:
    """One token per row of ``logits`` ``[B, V]`` -> ``[B]`` (int64).

    ``noise`` ``[B, V]`` float32, ``Exp(1)`` draws; unused (may be None)
    when ``options.greedy``. Logits or log-probabilities give the same
    tokens: every step below sees only differences within a row.
    """
    logits = logits.float()
    if options.greedy:
        return logits.argmax(dim=-1)
    logits = logits / options.temperature
    top_k, top_p = options.top_k, options.top_p
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the
        # most likely token always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    # The exponential race: argmax of p / E with E ~ Exp(1) draws from p. It
    # is what torch.multinomial does for one sample (the same numbers from
    # the same generator), minus its validity check, which waits for the
    # GPU on every token.
    return (probs / noise).argmax(dim=-1)


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from ``logits`` ``[B, V]`` -> ``[B]``.

    ``temperature = 0`` or ``top_k = 1`` is greedy.
    """
    options = SamplingOptions(temperature, top_k, top_p)
    noise = None
    if not options.greedy:
        noise = torch.empty(logits.shape, dtype=torch.float32, device=logits.device).exponential_(
            1.0, generator=generator)
    return draw(logits, noise, options)


__all__ = ["SamplingOptions", "draw", "sample_next"]
