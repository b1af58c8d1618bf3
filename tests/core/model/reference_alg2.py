"""The previous Algorithm 2, kept as the slow reference of the tests.

It re-projects everything it needs: the segment's queries from the layer's
(normalised) input and the evicted memories' keys and values from the
evicted slots themselves, all through detached copies of the layer's norm
and projections. The model now reuses the forward's queries, keys and
values instead; the tests check that both give the same loss and the same
compressor gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ct_core.model.compression_loss import autoencoding_loss


def frozen_query(attn, x: Tensor) -> Tensor:
    """Queries ``[B, H, T, d]`` of normalised ``x`` through a detached weight."""
    b, t, _ = x.shape
    q = F.linear(x, attn.w_q.weight.detach())
    return q.view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)


def content_attention(attn, q: Tensor, kv: Tensor, kv_valid: Tensor) -> Tensor:
    """Position-free attention of ``q`` over normalised ``kv`` ``[B, S, D]``
    through detached weights; rows with no valid slot give zeros."""
    b, s, _ = kv.shape
    k, v = F.linear(kv, attn.w_kv.weight.detach()).chunk(2, dim=-1)
    k = k.reshape(b, s, attn.n_heads, attn.head_dim).transpose(1, 2)
    v = v.reshape(b, s, attn.n_heads, attn.head_dim).transpose(1, 2)
    row_has_keys = kv_valid.any(dim=-1)  # [B]
    mask = (kv_valid | ~row_has_keys[:, None])[:, None, None, :]  # [B, 1, 1, S]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
    out = F.linear(out, attn.w_o.weight.detach())
    return out * row_has_keys[:, None, None].to(out.dtype)


def attention_reconstruction_loss(attn, norm: nn.LayerNorm | None, h: Tensor, old: Tensor, old_mask: Tensor,
                                  compressed: Tensor, compressed_mask: Tensor) -> Tensor:
    """Algorithm 2 for one layer, every tensor projected afresh."""
    h, old = h.detach(), old.detach()

    def normed(x: Tensor) -> Tensor:
        if norm is None:
            return x
        return F.layer_norm(x, norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps)

    q = frozen_query(attn, normed(h))
    with torch.no_grad():
        target = content_attention(attn, q, normed(old), old_mask)
    recon = content_attention(attn, q, normed(compressed), compressed_mask)
    row_weight = old_mask.any(dim=1).float()
    per_row = ((target.float() - recon.float()) ** 2).flatten(1).mean(dim=1)  # [B]
    return (per_row * row_weight).sum() / row_weight.sum().clamp(min=1.0)


def reference_update_memory(model, memory, hidden: Tensor, usage: list[Tensor] | None = None):
    """The previous ``CompressiveTransformerLM.update_memory``: Algorithm 1
    and the compression loss, with Algorithm 2 re-projecting its inputs."""
    cfg = model.cfg
    zero = hidden.new_zeros((), dtype=torch.float32)
    t = hidden.shape[2]
    memory = model.compress_pending(memory)
    ev = memory.evict(hidden.detach(), cfg.compression_rate)
    if memory.cmem_len == 0:
        return type(memory)(ev.mem, ev.mem_mask, memory.cmem, memory.cmem_mask), zero
    if cfg.compression_loss == "bptt" and torch.is_grad_enabled():
        return memory.detach().with_pending(ev), zero
    c_len = memory.cmem_len
    compressed, masks, losses = [], [], []
    want_loss = torch.is_grad_enabled() and cfg.compression_loss in ("attention", "autoencoding")
    for layer, comp in enumerate(model.compressors):
        old = ev.old[layer]
        layer_usage = None
        if comp.needs_usage:
            layer_usage = nn.functional.pad(usage[layer][:, c_len : c_len + t], (ev.n_pad, 0))
        new = comp(old, ev.old_mask, layer_usage)
        mask = comp.compressed_mask(ev.old_mask, layer_usage)
        if want_loss and cfg.compression_loss == "attention":
            block = model.blocks[layer]
            norm = block.norm_attn if block.pre_norm else None
            losses.append(attention_reconstruction_loss(block.attn, norm, hidden[layer], old, ev.old_mask, new,
                                                        mask))
        elif want_loss:
            losses.append(autoencoding_loss(model.decoders[layer], old, ev.old_mask, new))
        compressed.append(new)
        masks.append(mask)
    nxt = memory.detach().with_memories(ev, torch.stack(compressed).detach(), masks[0])
    aux = torch.stack(losses).mean() if losses else zero
    return nxt, aux
