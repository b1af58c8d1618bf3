"""The previous dense attention path, kept as the slow reference of the tests.

Position scores against the unpadded encodings, shifted by padding and
re-viewing, scaled, added to the mask, then either explicit matmuls (usage
wanted, or a few queries) or ``scaled_dot_product_attention`` with the
whole bias as ``attn_mask`` (SDPA's math kernel on CPU when the bias needs
a gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ct_core.model.attention import RelativeMultiHeadAttention


def _rel_shift(x: Tensor) -> Tensor:
    *lead, t, k = x.shape
    padded = F.pad(x, (1, 0)).reshape(*lead, k + 1, t)
    return padded[..., 1:, :].reshape(*lead, t, k)


class ReferenceAttention(RelativeMultiHeadAttention):
    """The module with its previous dense forward (same parameters)."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, r: Tensor, want_usage: bool = False):
        b, _, t, _ = q.shape
        dtype = k.dtype
        qu = (q + self.u[:, None, :]).to(dtype)
        bd = torch.einsum("bhtd,khd->bhtk", (q + self.v[:, None, :]).to(dtype), r.to(dtype))  # [B, H, T, K]
        if t > 1:
            bd = _rel_shift(bd)
        bias = bd * self.scale + mask
        usage = None
        if want_usage or t <= 4:
            scores = torch.matmul(qu, k.transpose(-1, -2)) * self.scale + bias
            probs = scores.float().softmax(dim=-1).to(v.dtype)
            if want_usage:
                usage = probs.float().sum(dim=(1, 2))
            if self.training and self.attn_dropout > 0:
                probs = F.dropout(probs, self.attn_dropout)
            out = torch.matmul(probs, v)
        else:
            out = F.scaled_dot_product_attention(qu, k, v, attn_mask=bias,
                                                 dropout_p=self.attn_dropout if self.training else 0.0)
        return self.w_o(out.transpose(1, 2).reshape(b, t, -1)), usage


def use_reference_attention(model) -> None:
    """Run every block's attention through :class:`ReferenceAttention`. The
    modules keep their parameters (an optimizer built before still holds
    them); only the forward changes."""
    for block in model.blocks:
        block.attn.__class__ = ReferenceAttention
