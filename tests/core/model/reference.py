"""Slow, obvious reference of the Compressive Transformer forward.

Written plainly for the tests: memories are growing lists of valid slots (no
fixed buffers, no masks), distances come from an explicit matrix instead of
the rel-shift trick, and compression is mean pooling over consecutive
groups. With ``cmem_len = 0`` it is Transformer-XL; with both memories 0 it
is a vanilla segment-local transformer. It reuses the model's parameters.
"""

from __future__ import annotations

import math

import torch


def sinusoid(distances: torch.Tensor, d_model: int) -> torch.Tensor:
    """Encoding of each distance: [sin(d * f_k)..., cos(d * f_k)...]."""
    freqs = torch.tensor([1.0 / 10000 ** (2 * k / d_model) for k in range(d_model // 2)])
    angles = distances.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def reference_attention(blk, h: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """One layer on segment ``h`` [B, T, D] with valid memory slots [B, S, D]."""
    attn = blk.attn
    b, t, d_model = h.shape
    s = memory.shape[1]
    x = torch.cat([memory, h], dim=1)
    xn = blk.norm_attn(x) if blk.pre_norm else x
    n_heads, hd = attn.n_heads, attn.head_dim
    q = (xn[:, s:] @ attn.w_q.weight.T).view(b, t, n_heads, hd)
    kv = xn @ attn.w_kv.weight.T
    k = kv[..., :d_model].reshape(b, s + t, n_heads, hd)
    v = kv[..., d_model:].reshape(b, s + t, n_heads, hd)
    qpos = torch.arange(t)[:, None] + s  # absolute index of query i among keys
    kpos = torch.arange(s + t)[None, :]
    dist = qpos - kpos  # [T, S + T]
    r = (sinusoid(dist.clamp(min=0), d_model) @ attn.w_r.weight.T).view(t, s + t, n_heads, hd)
    ac = torch.einsum("bihd,bjhd->bhij", q + attn.u, k)
    bd = torch.einsum("bihd,ijhd->bhij", q + attn.v, r)
    scores = (ac + bd) / math.sqrt(hd)
    scores = scores.masked_fill((dist < 0)[None, None], float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(b, t, d_model)
    a = out @ attn.w_o.weight.T
    if blk.pre_norm:
        h = h + a
        return h + blk.ff(blk.norm_ff(h))
    h = blk.norm_attn(h + a)
    return blk.norm_ff(h + blk.ff(h))


class ReferenceCT:
    """Plain Compressive Transformer with mean-pool compression."""

    def __init__(self, model, mem_len: int, cmem_len: int, compression_rate: int) -> None:
        self.model, self.mem_len, self.cmem_len, self.c = model, mem_len, cmem_len, compression_rate
        n = len(model.blocks)
        self.mem = [None] * n
        self.cmem = [None] * n

    def _slots(self, layer: int, b: int, d: int) -> torch.Tensor:
        parts = [x for x in (self.cmem[layer], self.mem[layer]) if x is not None]
        return torch.cat(parts, dim=1) if parts else torch.zeros(b, 0, d)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        h = m.embed(tokens)
        b, _, d = h.shape
        for layer, blk in enumerate(m.blocks):
            inp = h
            h = reference_attention(blk, h, self._slots(layer, b, d))
            self._update(layer, inp)
        return m.head(m.norm_out(h))

    def _update(self, layer: int, inp: torch.Tensor) -> None:
        full = inp if self.mem[layer] is None else torch.cat([self.mem[layer], inp], dim=1)
        n_evict = max(0, full.shape[1] - self.mem_len)
        evicted = full[:, :n_evict]
        self.mem[layer] = full[:, n_evict:] if self.mem_len > 0 else None
        if self.cmem_len == 0 or n_evict == 0:
            return
        assert n_evict % self.c == 0, "reference only handles whole groups"
        new = evicted.reshape(evicted.shape[0], n_evict // self.c, self.c, -1).mean(dim=2)
        cm = new if self.cmem[layer] is None else torch.cat([self.cmem[layer], new], dim=1)
        self.cmem[layer] = cm[:, -self.cmem_len :]
