"""One Compressive Transformer layer: relative attention over
``[cmem; mem; segment]`` and a position-wise feed-forward network.

Pre-LN by default (the official code's default); post-LN by option. The
layer's memory slots are normalised with the same norm as its input, since
they *are* earlier inputs of this layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ct_core.model.attention import RelativeMultiHeadAttention
from ct_core.model.config import ModelConfig


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.attn = RelativeMultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.norm_ff = nn.LayerNorm(cfg.d_model)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def attention_input(self, x: Tensor) -> Tensor:
        """What attention projects: the normed input (pre-LN) or the input."""
        return self.norm_attn(x) if self.pre_norm else x

    @property
    def attention_norm(self) -> nn.LayerNorm | None:
        return self.norm_attn if self.pre_norm else None

    def memory_kv(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[B, H, S, d]`` of memory slots ``[B, S, D]``."""
        return self.attn.project_kv(self.attention_input(slots))

    def forward(
        self,
        h: Tensor,
        slots: Sequence[Tensor],
        mask: Tensor,
        r: Tensor,
        want_usage: bool = False,
        want_qkv: bool = False,
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor, Tensor] | None]:
        """Run the layer on a segment ``h`` ``[B, T, D]``.

        slots: this layer's memory as attended, ``[B, C, D]`` compressed
        memory then ``[B, M, D]`` memory (``P = C + M``); mask: ``[B, 1, T, P + T]`` from
        :func:`attention_mask`; r: ``[P + T, H, d]`` projected encodings.
        Memory and segment are normalised and projected together (one norm,
        one key/value matmul). Returns the output ``[B, T, D]``, the
        attention usage and, if ``want_qkv``, the queries ``[B, H, T, d]``
        and keys and values ``[B, H, P + T, d]``, detached: Algorithm 2
        reuses them instead of projecting the same inputs again.
        """
        t = h.shape[1]
        x_all = self.attention_input(torch.cat([*slots, h], dim=1))  # [B, P + T, D]
        k, v = self.attn.project_kv(x_all)
        q = self.attn.project_query(x_all[:, x_all.shape[1] - t :])
        out, usage = self._attend_and_feed_forward(h, q, k, v, mask, r, want_usage)
        return out, usage, (q.detach(), k.detach(), v.detach()) if want_qkv else None

    def step(
        self,
        h: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        start: int,
        mask: Tensor,
        r: Tensor,
        want_usage: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Incremental variant of :meth:`forward` for a decoding cache.

        k_cache/v_cache: ``[B, H, K_max, d]`` holding everything before ``h``
        in ``[:start]``; the new keys/values are written in place at
        ``[start : start + T]`` (no copy of the prefix) and attended with it.
        """
        x = self.attention_input(h)
        t = h.shape[1]
        k_new, v_new = self.attn.project_kv(x)
        k_cache[:, :, start : start + t] = k_new
        v_cache[:, :, start : start + t] = v_new
        k, v = k_cache[:, :, : start + t], v_cache[:, :, : start + t]
        return self._attend_and_feed_forward(h, self.attn.project_query(x), k, v, mask, r, want_usage)

    def _attend_and_feed_forward(
        self, h: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, r: Tensor, want_usage: bool
    ) -> tuple[Tensor, Tensor | None]:
        a, usage = self.attn(q, k, v, mask, r, want_usage=want_usage)
        return self.after_attention(h, a), usage

    def after_attention(self, h: Tensor, a: Tensor) -> Tensor:
        """The rest of the layer from its input ``h`` and attention output
        ``a`` (``[B, T, D]`` each): residuals, norms, feed-forward."""
        if self.pre_norm:
            h = h + self.drop(a)
            h = h + self.drop(self.ff(self.norm_ff(h)))
        else:
            h = self.norm_attn(h + self.drop(a))
            h = self.norm_ff(h + self.drop(self.ff(h)))
        return h
