"""Multi-head attention with Transformer-XL relative positions.

Scores of query ``i`` against key ``j`` (Dai et al., 2019, with the two global
biases u and v)::

    (q_i + u) . k_j   +   (q_i + v) . W_r R_{dist(i, j)}
      content (AC)          position (BD)

Two kernels, chosen by the form of the mask (see
:class:`~ct_core.model.execution.Execution`):

- SDPA (the default, and always on CPU): the content term runs through
  ``scaled_dot_product_attention``; the position term, the causal mask and
  the memory validity mask enter it as one additive bias ``[B, H, T, K]``.
- FlexAttention (``flex``, CUDA by default): the unshifted position scores
  ``[B, H, T, K]`` are read by a ``score_mod`` at the shifted index, which
  also hides empty memory slots; a causal block mask lets the kernel skip
  the future keys' blocks. No shifted copy, bias or mask of full size is
  built, and the block mask depends only on ``(T, K)``, so one
  :class:`BlockMaskCache` builds it once per shape (see there why empty
  slots are not part of it).

Either way the position scores are built in the compute dtype (bf16 under
autocast), never in fp32 at full size.

The same :meth:`RelativeMultiHeadAttention.forward` serves a whole training
segment (``q_start = 0``) and cached incremental decoding (``q_start`` =
tokens of the segment already in the cache): the queries are always the last
``T`` of the ``K`` keys, which is what makes sampling equal training.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ct_core.model.relative_position import rel_shift

if TYPE_CHECKING:  # imported where used: the module costs half a second to import
    from torch.nn.attention.flex_attention import BlockMask


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: autocast's where it is on, else ``x``'s."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


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


def causal_block_mask(n_queries: int, n_keys: int, device: torch.device) -> BlockMask:
    """FlexAttention's block mask of causality alone, for every row and head:
    query ``i`` (key index ``K - T + i``) sees the keys up to itself."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = n_keys - n_queries

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= q_idx + offset

    return create_block_mask(mask_mod, None, None, n_queries, n_keys, device=device)


class FlexMask(NamedTuple):
    """What FlexAttention needs in place of :func:`attention_mask`: the
    causal block mask and which keys are filled, ``key_valid`` ``[B, K]``."""

    block_mask: BlockMask
    key_valid: Tensor


class BlockMaskCache:
    """Causal block masks by ``(T, K, device)``, built once each.

    Empty memory slots are hidden by the ``score_mod`` instead of the block
    mask: which slots are filled changes while memories fill and whenever a
    row is reset, and noticing that on the host would mean reading the
    validity from the GPU before every forward, a sync per step. The blocks
    this gives up skipping are empty memory, which exists only in the first
    segments after a reset; with full memories (the steady state) no block
    is empty anyway. ``hits`` and ``misses`` count the look-ups.
    """

    def __init__(self) -> None:
        self._masks: dict[tuple[int, int, torch.device], BlockMask] = {}
        self.hits = 0
        self.misses = 0

    def flex_mask(self, key_valid: Tensor, n_queries: int) -> FlexMask:
        """The :class:`FlexMask` of ``n_queries`` queries over keys ``key_valid`` ``[B, K]``."""
        key = (n_queries, key_valid.shape[1], key_valid.device)
        block_mask = self._masks.get(key)
        if block_mask is None:
            self.misses += 1
            block_mask = self._masks[key] = causal_block_mask(n_queries, key_valid.shape[1], key_valid.device)
        else:
            self.hits += 1
        return FlexMask(block_mask, key_valid)


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _flex_attention():
    """FlexAttention as it runs fused: plain inside a compiled region (the
    compiler fuses it there), else compiled on its own (eagerly it would
    materialise every score)."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention if torch.compiler.is_compiling() else _compiled(flex_attention)


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
        mask: Tensor | FlexMask,
        r: Tensor,
        want_usage: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend the last ``T`` key positions' queries over all ``K`` keys.

        x: ``[B, T, D]`` normalised query inputs; k, v: ``[B, H, K, d]`` with
        the queries' own keys last, in the compute dtype; mask: ``[B, 1, T,
        K]`` additive, from :func:`attention_mask` (shared by all layers), or
        a :class:`FlexMask` to run FlexAttention; r: ``[K, H, d]``
        projected encodings of distances
        ``K-1 .. 0``. Returns the output ``[B, T, D]`` and, if
        ``want_usage``, the attention mass per key summed over heads and
        queries ``[B, K]`` (for ``most_used`` compression).
        """
        b, t, _ = x.shape
        dtype = k.dtype  # the compute dtype: bf16 under autocast, else the parameters'
        q = self._heads(self.w_q(x))  # [B, H, T, d]
        # u and v are fp32 parameters: cast the sums, so that no [B, H, T, K]
        # term below is promoted to fp32 under autocast.
        qu = (q + self.u[:, None, :]).to(dtype)
        bd = torch.einsum("bhtd,khd->bhtk", (q + self.v[:, None, :]).to(dtype), r.to(dtype))  # [B, H, T, K]
        if isinstance(mask, FlexMask):
            if want_usage:
                raise ValueError("FlexAttention does not report the attention usage; pass an additive mask")
            out = self._flex(qu, k, v, bd, mask)
            return self.w_o(out.transpose(1, 2).reshape(b, t, -1)), None
        if t > 1:  # a lone query needs no shift: its distances already descend
            bd = rel_shift(bd)
        bias = bd * self.scale + mask  # [B, H, T, K]
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
                attn_mask=bias,
                dropout_p=self.attn_dropout if self.training else 0.0,
            )  # [B, H, T, d]
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.w_o(out), usage

    def _flex(self, qu: Tensor, k: Tensor, v: Tensor, bd: Tensor, mask: FlexMask) -> Tensor:
        """FlexAttention with the position term read from the unshifted
        scores ``bd`` ``[B, H, T, K]``: the score of query ``i`` and key ``j``
        gets ``bd[i, j + T - 1 - i]`` (what :func:`rel_shift` would move to
        ``[i, j]``; indices past ``K`` belong to future keys, which the block
        mask hides, and are clamped), and empty memory slots get ``-inf``
        (every query sees at least its own key, so no row is all ``-inf``).
        Returns ``[B, H, T, d]``."""
        t, n_keys = bd.shape[-2], bd.shape[-1]
        shift, scale, key_valid = t - 1, self.scale, mask.key_valid

        def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            position = bd[b, h, q_idx, torch.clamp(kv_idx + shift - q_idx, max=n_keys - 1)] * scale
            return torch.where(key_valid[b, kv_idx], score + position, float("-inf"))

        return _flex_attention()(qu, k, v, score_mod=score_mod, block_mask=mask.block_mask, scale=scale)

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
