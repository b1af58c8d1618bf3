"""Losses that train the compression function f_c.

- ``attention`` (Algorithm 2): per layer, with stop-gradient on the
  segment's hidden states, on the evicted memories and on everything of the
  layer but the compressor (norm, projections),
  ``L = mean((attn(h, old) - attn(h, f_c(old)))^2)`` with content-only
  attention; averaged over layers. It trains only the compressor, and since
  stored memories are detached the LM loss never reaches the compressor.
  The segment's queries and the evicted slots' keys and values are those
  the forward computed with the same weights (:class:`ForwardAttention`,
  detached, which is the stop-gradient); only the compressed slots are
  projected here, through detached weights, so gradients reach f_c alone.
- ``autoencoding``: a learned decoder (transposed convolution, kernel =
  stride = c) reconstructs ``old`` from ``f_c(old)``; trains compressor and
  decoder.
- ``bptt`` and ``none`` have no auxiliary loss here (``bptt`` lets the next
  segment's LM loss train f_c instead, through the deferred compression of
  :meth:`~ct_core.model.lm.CompressiveTransformerLM.compress_pending`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ct_core.model.attention import RelativeMultiHeadAttention


def _masked_row_mean(sq_err: Tensor, row_weight: Tensor) -> Tensor:
    """Mean of ``sq_err`` ``[B, ...]`` over rows with weight 1 (others ignored)."""
    per_row = sq_err.flatten(1).mean(dim=1)  # [B]
    return (per_row * row_weight).sum() / row_weight.sum().clamp(min=1.0)


@dataclass
class ForwardAttention:
    """One layer's attention tensors of the forward, detached, for Algorithm 2."""

    query: Tensor  # [B, H, T, d] the segment's queries (without the u, v biases)
    key: Tensor  # [B, H, T, d] keys of the T slots the memory update evicts
    value: Tensor  # [B, H, T, d] their values


def content_attention(q: Tensor, k: Tensor, v: Tensor, kv_valid: Tensor) -> Tensor:
    """Position-free attention of queries ``q`` ``[B, H, T, d]`` over keys
    and values ``[B, H, S, d]`` -> heads concatenated ``[B, T, H·d]``,
    before the output projection. kv_valid: ``[B, S]`` bool; rows with no
    valid slot produce zeros."""
    row_has_keys = kv_valid.any(dim=-1)  # [B]
    # A row with no valid key would softmax over nothing; let it see all
    # keys and zero its output afterwards instead of producing NaNs.
    mask = (kv_valid | ~row_has_keys[:, None])[:, None, None, :]  # [B, 1, 1, S]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
    return out * row_has_keys[:, None, None].to(out.dtype)


def frozen_kv(attn: RelativeMultiHeadAttention, norm: nn.LayerNorm | None, x: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and values ``[B, H, S, d]`` of layer inputs ``x`` ``[B, S, D]``
    through detached copies of the layer's norm and key/value projection:
    gradients reach ``x`` only."""
    if norm is not None:
        x = F.layer_norm(x, norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps)
    b, s, _ = x.shape
    k, v = F.linear(x, attn.w_kv.weight.detach()).chunk(2, dim=-1)
    return (k.reshape(b, s, attn.n_heads, attn.head_dim).transpose(1, 2),
            v.reshape(b, s, attn.n_heads, attn.head_dim).transpose(1, 2))


def attention_reconstruction_loss(
    attn: RelativeMultiHeadAttention,
    norm: nn.LayerNorm | None,
    seen: ForwardAttention,
    old_mask: Tensor,
    compressed: Tensor,
    compressed_mask: Tensor,
) -> Tensor:
    """Algorithm 2 for one layer.

    seen: the forward's queries and the keys and values of the ``T``
    evicted slots; old_mask: ``[B, T']`` validity of the evicted block
    padded at its oldest end (``T' >= T``, padding never valid);
    compressed: ``[B, T'/c, D]`` = f_c(old) (mask ``[B, T'/c]``). ``norm``
    is the layer's pre-attention norm (pre-LN) or None (post-LN); it is
    applied with frozen parameters.
    """
    q = seen.query.detach()  # shared by both attentions
    evicted_valid = old_mask[:, old_mask.shape[1] - seen.key.shape[2] :]  # [B, T]: the padding is never valid
    with torch.no_grad():  # the target depends on nothing trainable
        target = content_attention(q, seen.key, seen.value, evicted_valid)
    k, v = frozen_kv(attn, norm, compressed)
    recon = content_attention(q, k, v, compressed_mask)
    # The output projection is linear: W_o·target − W_o·recon = W_o·(target −
    # recon), one projection (detached, as the stop-gradient asks) instead of two.
    error = F.linear(target - recon, attn.w_o.weight.detach())  # [B, T, D]
    row_weight = old_mask.any(dim=1).float()  # rows with nothing evicted teach nothing
    return _masked_row_mean(error.float() ** 2, row_weight)


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
