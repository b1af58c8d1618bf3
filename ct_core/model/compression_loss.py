"""Losses that train the compression function f_c.

- ``attention`` (Algorithm 2): per layer, with stop-gradient on the
  segment's hidden states, on the evicted memories and on everything of the
  layer but the compressor (norm, projections),
  ``L = mean((attn(h, old) - attn(h, f_c(old)))^2)`` with content-only
  attention; averaged over layers. It trains only the compressor, and since
  stored memories are detached the LM loss never reaches the compressor.
- ``autoencoding``: a learned decoder (transposed convolution, kernel =
  stride = c) reconstructs ``old`` from ``f_c(old)``; trains compressor and
  decoder.
- ``bptt`` and ``none`` have no auxiliary loss here (``bptt`` lets the next
  segment's LM loss train f_c instead, through the deferred compression of
  :meth:`~ct_core.model.lm.CompressiveTransformerLM.compress_pending`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ct_core.model.attention import RelativeMultiHeadAttention


def _masked_row_mean(sq_err: Tensor, row_weight: Tensor) -> Tensor:
    """Mean of ``sq_err`` ``[B, ...]`` over rows with weight 1 (others ignored)."""
    per_row = sq_err.flatten(1).mean(dim=1)  # [B]
    return (per_row * row_weight).sum() / row_weight.sum().clamp(min=1.0)


def attention_reconstruction_loss(
    attn: RelativeMultiHeadAttention,
    norm: nn.LayerNorm | None,
    h: Tensor,
    old: Tensor,
    old_mask: Tensor,
    compressed: Tensor,
    compressed_mask: Tensor,
) -> Tensor:
    """Algorithm 2 for one layer.

    h: ``[B, T, D]`` the layer's input for the segment; old: ``[B, T', D]``
    evicted memories (mask ``[B, T']``); compressed: ``[B, T'/c, D]`` = f_c(old)
    (mask ``[B, T'/c]``). ``norm`` is the layer's pre-attention norm (pre-LN)
    or None (post-LN); it is applied with frozen parameters.
    """
    h, old = h.detach(), old.detach()

    def normed(x: Tensor) -> Tensor:
        if norm is None:
            return x
        return F.layer_norm(x, norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps)

    q = attn.frozen_query(normed(h))  # shared by both attentions
    with torch.no_grad():  # the target depends on nothing trainable
        target = attn.content_attention(q, normed(old), old_mask)
    recon = attn.content_attention(q, normed(compressed), compressed_mask)
    row_weight = old_mask.any(dim=1).to(h.dtype)  # rows with nothing evicted teach nothing
    return _masked_row_mean((target.float() - recon.float()) ** 2, row_weight.float())


class AutoencodingDecoder(nn.Module):
    """Reconstructs ``[B, T', D]`` from ``[B, T'/c, D]``."""

    def __init__(self, d_model: int, compression_rate: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose1d(d_model, d_model, kernel_size=compression_rate, stride=compression_rate)

    def forward(self, compressed: Tensor) -> Tensor:
        return self.deconv(compressed.transpose(1, 2)).transpose(1, 2)


def autoencoding_loss(decoder: AutoencodingDecoder, old: Tensor, old_mask: Tensor, compressed: Tensor) -> Tensor:
    """MSE between ``old`` and its reconstruction over valid slots only."""
    recon = decoder(compressed)  # [B, T', D]
    sq_err = ((recon.float() - old.detach().float()) ** 2).mean(dim=-1)  # [B, T']
    valid = old_mask.to(sq_err.dtype)
    return (sq_err * valid).sum() / valid.sum().clamp(min=1.0)
