"""Multi-head attention with Transformer-XL relative positions.

Scores of query ``i`` against key ``j`` (Dai et al., 2019, with the two global
biases u and v)::

    (q_i + u) . k_j   +   (q_i + v) . W_r R_{dist(i, j)}
      content (AC)          position (BD)

The content term runs through ``scaled_dot_product_attention``; the position
term, the causal mask and the memory validity mask enter it as one additive
bias, so the fused kernels do the heavy lifting.

The same :meth:`RelativeMultiHeadAttention.forward` serves a whole training
segment (``q_start = 0``) and cached incremental decoding (``q_start`` =
tokens of the segment already in the cache): the queries are always the last
``T`` of the ``K`` keys, which is what makes sampling equal training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ct_core.model.relative_position import rel_shift


def attention_mask(key_valid: Tensor, n_queries: int, dtype: torch.dtype) -> Tensor:
    """Additive mask ``[B, 1, T, K]``: 0 where query ``i`` may see key ``j``,
    ``-inf`` for empty memory slots (key_valid ``[B, K]`` False) and for the
    future. The queries are the last ``T`` keys, so query ``i`` sits at key
    index ``K - T + i``."""
    n_keys = key_valid.shape[1]
    device = key_valid.device
    causal = torch.arange(n_keys, device=device)[None, :] <= (
        torch.arange(n_queries, device=device)[:, None] + (n_keys - n_queries)
    )  # [T, K]
    allowed = causal[None, :, :] & key_valid[:, None, :]  # [B, T, K]
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, float("-inf"))[:, None, :, :]


class RelativeMultiHeadAttention(nn.Module):
    """Attention of ``T`` queries over ``K`` keys ``[cmem; mem; segment]``."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.attn_dropout = attn_dropout
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.w_r = nn.Linear(d_model, d_model, bias=False)
        self.w_o = nn.Linear(d_model, d_model, bias=False)
        self.u = nn.Parameter(torch.zeros(n_heads, self.head_dim))  # content bias
        self.v = nn.Parameter(torch.zeros(n_heads, self.head_dim))  # position bias

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, S, D]`` -> ``[B, H, S, d]``."""
        b, s, _ = x.shape
        return x.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B, H, S, d]`` of (already normalised) ``x`` ``[B, S, D]``."""
        k, v = self.w_kv(x).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def project_positions(self, r: Tensor) -> Tensor:
        """``W_r R``: ``[K, D]`` encodings -> ``[K, H, d]``."""
        return self.w_r(r).view(r.shape[0], self.n_heads, self.head_dim)

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        r: Tensor,
        want_usage: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend the last ``T`` key positions' queries over all ``K`` keys.

        x: ``[B, T, D]`` normalised query inputs; k, v: ``[B, H, K, d]`` with
        the queries' own keys last; mask: ``[B, 1, T, K]`` additive, from
        :func:`attention_mask` (shared by all layers); r: ``[K, H, d]``
        projected encodings of distances
        ``K-1 .. 0``. Returns the output ``[B, T, D]`` and, if
        ``want_usage``, the attention mass per key summed over heads and
        queries ``[B, K]`` (for ``most_used`` compression).
        """
        b, t, _ = x.shape
        q = self._heads(self.w_q(x))  # [B, H, T, d]
        bd = torch.einsum("bhtd,khd->bhtk", q + self.v[:, None, :], r)  # [B, H, T, K]
        if t > 1:  # a lone query needs no shift: its distances already descend
            bd = rel_shift(bd)
        bias = bd * self.scale + mask  # [B, H, T, K]
        qu = q + self.u[:, None, :]
        usage = None
        # Decoding steps (a few queries) run faster as plain matmuls than
        # through the fused kernel, whose per-call set-up dominates there.
        if want_usage or t <= 4:
            scores = torch.matmul(qu, k.transpose(-1, -2)) * self.scale + bias  # [B, H, T, K]
            probs = scores.float().softmax(dim=-1).to(v.dtype)
            if want_usage:
                usage = probs.float().sum(dim=(1, 2))  # [B, K]
            if self.training and self.attn_dropout > 0:
                probs = F.dropout(probs, self.attn_dropout)
            out = torch.matmul(probs, v)
        else:
            out = F.scaled_dot_product_attention(
                qu,
                k,
                v,
                attn_mask=bias.to(qu.dtype),
                dropout_p=self.attn_dropout if self.training else 0.0,
            )  # [B, H, T, d]
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.w_o(out), usage

    def frozen_query(self, x: Tensor) -> Tensor:
        """Queries ``[B, H, T, d]`` of normalised ``x`` ``[B, T, D]`` through a
        detached copy of the weight (for :meth:`content_attention`)."""
        return self._heads(F.linear(x, self.w_q.weight.detach()))

    def content_attention(self, q: Tensor, kv: Tensor, kv_valid: Tensor) -> Tensor:
        """Position-free attention of queries ``q`` (:meth:`frozen_query`)
        over normalised ``kv`` ``[B, S, D]`` -> ``[B, T, D]``.

        Every projection is used through a detached copy of its weight, so a
        loss on the output trains nothing of this layer (the paper's
        stop-gradient on the attention weights in Algorithm 2); gradients
        reach ``kv`` only. kv_valid: ``[B, S]`` bool; rows with no valid slot
        produce zeros.
        """
        k, v = F.linear(kv, self.w_kv.weight.detach()).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        row_has_keys = kv_valid.any(dim=-1)  # [B]
        # A row with no valid key would softmax over nothing; let it see all
        # keys and zero its output afterwards instead of producing NaNs.
        mask = (kv_valid | ~row_has_keys[:, None])[:, None, None, :]  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
        out = F.linear(out, self.w_o.weight.detach())
        return out * row_has_keys[:, None, None].to(out.dtype)
