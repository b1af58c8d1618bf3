"""Multi-head attention with Transformer-XL relative positions.

Scores of query ``i`` against key ``j`` (Dai et al., 2019, with the two global
biases u and v)::

    (q_i + u) . k_j   +   (q_i + v) . W_r R_{dist(i, j)}
      content (AC)          position (BD)

Two kernels, chosen by the form of the mask (see
:class:`~ct_core.model.execution.Execution`):

- Dense (the default, and always on CPU): the position term, the causal
  mask and the memory validity mask make one additive bias ``[B, H, T, K]``.
  The scale is folded into ``q + u`` and ``q + v`` (``[B, H, T, d]``, not
  ``[B, H, T, K]``), the position scores are computed against ``[0; R]`` so
  that they come out in the rel-shift's padded layout and shift as a view,
  and the mask is added in the pass that materialises the bias. The bias
  then enters ``scaled_dot_product_attention``, or, where SDPA would take
  its unfused math kernel (on CPU when the bias needs a gradient or
  attention dropout is on), ``baddbmm`` (bias + content scores in one
  GEMM), softmax and ``bmm``; that path also serves a few queries (decoding)
  and reports the attention usage.
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

from ct_core.model.relative_position import rel_shift_padded

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

    def project_query(self, x: Tensor) -> Tensor:
        """Queries ``[B, H, T, d]`` of (already normalised) ``x`` ``[B, T, D]``."""
        return self._heads(self.w_q(x))

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B, H, S, d]`` of (already normalised) ``x`` ``[B, S, D]``."""
        k, v = self.w_kv(x).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def project_positions(self, r: Tensor) -> Tensor:
        """``W_r R``: ``[K, D]`` encodings -> ``[K, H, d]``."""
        return self.w_r(r).view(r.shape[0], self.n_heads, self.head_dim)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | FlexMask,
        r: Tensor,
        want_usage: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend the last ``T`` key positions' queries over all ``K`` keys.

        q: ``[B, H, T, d]`` from :meth:`project_query`; k, v: ``[B, H, K,
        d]`` with the queries' own keys last, in the compute dtype; mask:
        ``[B, 1, T, K]`` additive, from :func:`attention_mask` (shared by all
        layers), or a :class:`FlexMask` to run FlexAttention; r: ``[K,
        H, d]`` projected encodings of distances ``K-1 .. 0``. Returns the
        output ``[B, T, D]`` and, if ``want_usage``, the attention mass per
        key summed over heads and queries ``[B, K]`` (for ``most_used``
        compression).
        """
        b, t = q.shape[0], q.shape[2]
        dtype = k.dtype  # the compute dtype: bf16 under autocast, else the parameters'
        if isinstance(mask, FlexMask):
            if want_usage:
                raise ValueError("FlexAttention does not report the attention usage; pass an additive mask")
            qu = (q + self.u[:, None, :]).to(dtype)
            bd = torch.einsum("bhtd,khd->bhtk", (q + self.v[:, None, :]).to(dtype), r.to(dtype))  # [B, H, T, K]
            out = self._flex(qu, k, v, bd, mask)
            return self.w_o(out.transpose(1, 2).reshape(b, t, -1)), None
        out, usage = self._dense(q, k, v, mask, r, want_usage)  # [B, H, T, d]
        # Back to the queries' dtype from a decoding cache kept in another (bf16).
        return self.w_o(out.transpose(1, 2).reshape(b, t, -1).to(q.dtype)), usage

    def _dense(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, r: Tensor,
               want_usage: bool) -> tuple[Tensor, Tensor | None]:
        """Attention with the additive bias; ``[B, H, T, d]`` and the usage."""
        b, n_heads, t, d = q.shape
        n_keys = k.shape[2]
        dtype = k.dtype
        dropout = self.attn_dropout if self.training else 0.0
        # u and v are fp32 parameters: cast the sums, so that no [B, H, T, K]
        # term below is promoted to fp32 under autocast. Scaling here scales
        # both score terms at the cost of two [B, H, T, d] products.
        qu = ((q + self.u[:, None, :]) * self.scale).to(dtype)
        qv = ((q + self.v[:, None, :]) * self.scale).to(dtype)
        bias = self._position_scores(qv, r.to(dtype)) + mask  # [B, H, T, K]: shift and mask in one pass
        # SDPA's CPU kernel has no gradient for the bias and no dropout: it
        # would fall back to its math kernel, which scales, adds and copies
        # more than the path below.
        math_kernel = q.device.type == "cpu" and (bias.requires_grad or dropout > 0)
        # Decoding steps (a few queries) run faster as plain matmuls than
        # through the fused kernel, whose per-call set-up dominates there.
        if not (want_usage or t <= 4 or math_kernel):
            out = F.scaled_dot_product_attention(qu, k, v, attn_mask=bias, dropout_p=dropout, scale=1.0)
            return out, None
        # Batch the (batch, head) pairs in the order k is laid out in: head
        # first for a training segment (the bias already is), batch first
        # for a decoding cache [B, H, K_max, d], whose keys then need no copy.
        heads_first = _merges(k, 1, 0) or not _merges(k, 0, 1)

        def flat(x: Tensor) -> Tensor:  # [B, H, S, e] -> [B·H, S, e] in the chosen order
            return (x.transpose(0, 1) if heads_first else x).reshape(b * n_heads, x.shape[2], x.shape[3])

        scores = torch.baddbmm(flat(bias), flat(qu), flat(k).transpose(1, 2))  # [B·H, T, K]
        probs = scores.float().softmax(dim=-1).to(v.dtype)
        usage = None
        if want_usage:
            per_pair = probs.float().sum(dim=1)  # [B·H, K]
            usage = (per_pair.view(n_heads, b, n_keys).sum(dim=0) if heads_first
                     else per_pair.view(b, n_heads, n_keys).sum(dim=1))  # [B, K]
        if dropout > 0:
            probs = F.dropout(probs, dropout)
        out = torch.bmm(probs, flat(v))  # [B·H, T, d]
        if heads_first:
            return out.view(n_heads, b, t, d).transpose(0, 1), usage
        return out.view(b, n_heads, t, d), usage

    def _position_scores(self, qv: Tensor, r: Tensor) -> Tensor:
        """Position scores ``[B, H, T, K]`` (a view, laid out head first)
        aligned with the keys, from scaled ``q + v`` ``[B, H, T, d]`` and
        ``r`` ``[K, H, d]``.

        Per head, all ``B·T`` queries go through one GEMM against ``[0; R]``
        (no copy of ``R`` per batch row); its output ``[H, B·T, K + 1]`` is
        the rel-shift's padded layout, so the shift is a view
        (:func:`rel_shift_padded`).
        """
        b, n_heads, t, d = qv.shape
        n_keys = r.shape[0]
        r_padded = F.pad(r, (0, 0, 0, 0, 1, 0))  # [K + 1, H, d]: a zero encoding first
        padded = torch.bmm(qv.transpose(0, 1).reshape(n_heads, b * t, d), r_padded.permute(1, 2, 0))
        shifted = rel_shift_padded(padded.view(n_heads, b, t, n_keys + 1))  # [H, B, T, K]
        return shifted.transpose(0, 1)

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


def _merges(x: Tensor, outer: int, inner: int) -> bool:
    """Whether dims ``outer`` and ``inner`` of ``x``, in that order, flatten into one without a copy."""
    if x.shape[outer] == 1 or x.shape[inner] == 1:
        return True
    return x.stride(outer) == x.shape[inner] * x.stride(inner)
