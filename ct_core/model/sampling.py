"""Cached incremental decoding and sampling.

:class:`IncrementalDecoder` keeps, per layer, a key/value buffer laid out
exactly like the training forward's keys ``[cmem; mem; segment]``. Memory
keys/values are projected once per segment (not per token), each new token
appends its own key/value, and when the segment reaches ``seq_len`` tokens
the memories are updated with the model's own Algorithm-1 code. Every token
therefore sees the same conditional distribution as in training.

Example::

    seq = generate(model, prompt, max_new_tokens=64, top_k=50,
                   generator=torch.Generator().manual_seed(0))   # [B, P + 64]
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ct_core.model.attention import attention_mask
from ct_core.model.memory import MemoryState
from ct_core.model.lm import CompressiveTransformerLM


class IncrementalDecoder:
    """Feed tokens (one or many at a time) and get their logits."""

    def __init__(self, model: CompressiveTransformerLM, batch_size: int, memory: MemoryState | None = None) -> None:
        self.model = model
        cfg = model.cfg
        device = model.embed.weight.device
        if memory is None:
            memory = model.empty_memory(batch_size, device=device)
        with torch.no_grad():
            self.memory = model.compress_pending(memory)
        self.seq_len = cfg.seq_len
        self.prefix = self.memory.cmem_len + self.memory.mem_len  # P = C + M
        self.n_keys = self.prefix + cfg.seq_len  # K_max
        self.want_usage = model.needs_usage
        dtype = model.embed.weight.dtype
        pos = model.positions(self.n_keys, device, dtype)  # [K_max, D]
        with torch.no_grad():
            # Projected encodings of every distance, computed once.
            self.r = [blk.attn.project_positions(pos) for blk in model.blocks]  # [K_max, H, d]
        h, d = cfg.n_heads, cfg.head_dim
        shape = (batch_size, h, self.n_keys, d)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.hidden = torch.zeros(cfg.n_layers, batch_size, cfg.seq_len, cfg.d_model, device=device, dtype=dtype)
        self.usage = [torch.zeros(batch_size, self.n_keys, device=device) for _ in model.blocks]
        self.pos = 0
        self._begin_segment()

    @torch.inference_mode()
    def _begin_segment(self) -> None:
        """Project this segment's memory keys/values once, for all tokens."""
        m, p = self.memory, self.prefix
        for layer, blk in enumerate(self.model.blocks):
            slots, _ = m.attended(layer)  # [B, P, D]
            k, v = blk.memory_kv(slots)
            self.k[layer][:, :, :p] = k
            self.v[layer][:, :, :p] = v
            self.usage[layer].zero_()
        ones = torch.ones(m.batch_size, self.seq_len, dtype=torch.bool, device=m.mem.device)
        self.key_valid = torch.cat([m.cmem_mask, m.mem_mask, ones], dim=1)  # [B, K_max]

    @torch.inference_mode()
    def _step(self, tokens: Tensor) -> Tensor:
        """tokens ``[B, n]`` fitting in the current segment -> logits ``[B, n, V]``."""
        n, s, p = tokens.shape[1], self.pos, self.prefix
        keys = p + s + n
        h = self.model.embed(tokens)  # [B, n, D]
        mask = attention_mask(self.key_valid[:, :keys], n, h.dtype)  # [B, 1, n, keys]
        for layer, blk in enumerate(self.model.blocks):
            self.hidden[layer, :, s : s + n] = h
            h, u = blk.step(
                h,
                self.k[layer],
                self.v[layer],
                p + s,
                mask,
                self.r[layer][self.n_keys - keys :],
                want_usage=self.want_usage,
            )
            if u is not None:
                self.usage[layer][:, :keys] += u
        self.pos += n
        return self.model.head(self.model.norm_out(h))

    @torch.inference_mode()
    def _roll(self) -> None:
        """Segment full: update the memories exactly as training does."""
        usage = self.usage if self.want_usage else None
        self.memory, _ = self.model.update_memory(self.memory, self.hidden[:, :, : self.pos], usage)
        self.pos = 0
        self._begin_segment()

    @torch.inference_mode()
    def feed(self, tokens: Tensor) -> Tensor:
        """Consume ``tokens`` ``[B, n]`` (any n); return their logits ``[B, n, V]``."""
        outs, i, n = [], 0, tokens.shape[1]
        while i < n:
            take = min(n - i, self.seq_len - self.pos)
            outs.append(self._step(tokens[:, i : i + take]))
            i += take
            if self.pos == self.seq_len:
                self._roll()
        return torch.cat(outs, dim=1)


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
    logits = logits.float()
    if temperature <= 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits / temperature
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
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: CompressiveTransformerLM,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    memory: MemoryState | None = None,
    callback: Callable[[Tensor], None] | None = None,
    progress: bool = False,
) -> Tensor:
    """Continue ``prompt`` ``[B, P]`` (``P >= 1``) by ``max_new_tokens``.

    Returns ``[B, P + max_new_tokens]`` with the prompt unchanged as prefix.
    ``callback`` receives each new token column ``[B]`` as it is drawn.
    """
    if prompt.dim() == 1:
        prompt = prompt[None, :]
    if prompt.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    was_training = model.training
    model.eval()
    try:
        dec = IncrementalDecoder(model, prompt.shape[0], memory)
        logits = dec.feed(prompt)[:, -1]  # [B, V]
        new = []
        bar = _progress_bar(max_new_tokens) if progress else None
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # [B]
            new.append(nxt)
            if callback is not None:
                callback(nxt)
            if bar is not None:
                bar.update(1)
            if i + 1 < max_new_tokens:
                logits = dec.feed(nxt[:, None])[:, -1]
        if bar is not None:
            bar.close()
    finally:
        model.train(was_training)
    if not new:
        return prompt.clone()
    return torch.cat([prompt, torch.stack(new, dim=1).to(prompt.dtype)], dim=1)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", desc="sampling", smoothing=0.1, mininterval=0.5)


__all__ = ["IncrementalDecoder", "generate", "sample_next"]
