"""The dense attention path (scale folded into the query sums, the shift as
a view of position scores computed in the padded layout, the mask added in
the bias pass, baddbmm + softmax + bmm where SDPA would run its math
kernel) gives the previous path's outputs, usage and gradients, for a
training segment and for decoding caches; attention dropout still drops
and rescales attention weights."""

import copy

import pytest
import torch

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.model.attention import RelativeMultiHeadAttention, attention_mask
from ct_core.model.relative_position import rel_shift_padded
from tests.core.model.reference_attention import ReferenceAttention, use_reference_attention

B, H, D = 3, 4, 32
HEAD = D // H


def make_attention(dropout: float = 0.0) -> tuple[RelativeMultiHeadAttention, ReferenceAttention]:
    torch.manual_seed(0)
    attn = RelativeMultiHeadAttention(D, H, dropout)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    ref = copy.deepcopy(attn)
    ref.__class__ = ReferenceAttention
    return attn, ref


def inputs(t: int, n_mem: int, cache_layout: bool, seed: int = 1):
    """q [B, H, T, d]; k, v [B, H, K, d] laid out as the training forward
    makes them (views of one [B, K, 2D] projection) or as a decoding cache
    (contiguous [B, H, K_max, d] sliced); the mask hides the future, a few
    empty memory slots, and all memory of row 1 (a reset row); r [K, H, d]."""
    g = torch.Generator().manual_seed(seed)
    n_keys = n_mem + t
    q = torch.randn(B, H, t, HEAD, generator=g)
    if cache_layout:
        cache = torch.randn(2, B, H, n_keys + 5, HEAD, generator=g)
        k, v = cache[0, :, :, :n_keys], cache[1, :, :, :n_keys]
    else:
        kv = torch.randn(B, n_keys, 2 * D, generator=g)
        k, v = (x.view(B, n_keys, H, HEAD).transpose(1, 2) for x in kv.chunk(2, dim=-1))
    valid = torch.ones(B, n_keys, dtype=torch.bool)
    valid[:, : n_mem // 3] = False
    valid[1, :n_mem] = False
    mask = attention_mask(valid, t, torch.float32)
    r = torch.randn(n_keys, H, HEAD, generator=g)
    return q, k, v, mask, r


def run(attn, q, k, v, mask, r, want_usage, grad: bool):
    leaves = [x.detach().clone().requires_grad_(grad) for x in (q, k, v, r)]
    with torch.set_grad_enabled(grad):
        out, usage = attn(leaves[0], leaves[1], leaves[2], mask, leaves[3], want_usage=want_usage)
    if not grad:
        return out, usage, []
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    params = [attn.u, attn.v, attn.w_o.weight]
    grads = torch.autograd.grad((out * weight).sum(), leaves + params)
    return out, usage, grads


@pytest.mark.parametrize("cache_layout", [False, True])
@pytest.mark.parametrize("want_usage", [False, True])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("t,n_mem", [(1, 12), (3, 12), (8, 12), (8, 0), (16, 5)])
def test_dense_attention_equals_the_previous_path(t, n_mem, grad, want_usage, cache_layout):
    attn, ref = make_attention()
    args = inputs(t, n_mem, cache_layout)
    out, usage, grads = run(attn, *args, want_usage, grad)
    out_ref, usage_ref, grads_ref = run(ref, *args, want_usage, grad)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    if want_usage:
        torch.testing.assert_close(usage, usage_ref, rtol=1e-5, atol=1e-5)
    else:
        assert usage is None
    assert len(grads) == len(grads_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("compression,mem_len", [("conv", 6), ("most_used", 12)])
def test_model_logits_and_every_gradient_equal_the_previous_path(norm, compression, mem_len):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layers=2, d_model=D, n_heads=H, d_ff=64, seq_len=8, mem_len=mem_len,
                      cmem_len=4, compression_rate=4, compression=compression,
                      compression_loss="attention" if compression == "conv" else "none", norm=norm, init_std=0.2)
    model = CompressiveTransformerLM(cfg).train()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.u.normal_(0, 0.5)
            blk.attn.v.normal_(0, 0.5)
    ref = copy.deepcopy(model)
    use_reference_attention(ref)
    tokens = torch.randint(0, 40, (B, 8 * 3 + 1), generator=torch.Generator().manual_seed(4))
    memories = [None, None]
    for s in range(3):
        reset = torch.tensor([False, s == 2, False])
        for i, m in enumerate((model, ref)):
            m.zero_grad(set_to_none=True)
            out = m(tokens[:, s * 8 : (s + 1) * 8], memories[i], reset, return_usage=True)
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1),
                                                     tokens[:, s * 8 + 1 : (s + 1) * 8 + 1].flatten())
            (loss + out.aux_loss).backward()
            memories[i] = out
        new, old = memories
        torch.testing.assert_close(new.logits, old.logits, rtol=1e-5, atol=1e-5)
        for u, u_ref in zip(new.usage, old.usage):
            torch.testing.assert_close(u, u_ref, rtol=1e-5, atol=1e-5)
        for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
            assert (p.grad is None) == (p_ref.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-5, atol=1e-5, msg=name)
        memories = [new.memory, old.memory]


def graph_ops(out: torch.Tensor) -> set[str]:
    """Names of the autograd nodes ``out`` was computed by."""
    names, visited, todo = set(), set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in visited:
            continue
        visited.add(fn)
        names.add(fn.name())
        todo.extend(next_fn for next_fn, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_cpu_training_takes_baddbmm_and_bmm_not_the_math_kernel(dropout):
    attn, _ = make_attention(dropout)
    q, k, v, mask, r = inputs(8, 12, cache_layout=False)
    out, _ = attn(q.requires_grad_(), k, v, mask, r)
    ops = graph_ops(out)
    assert {"BaddbmmBackward0", "BmmBackward0", "SoftmaxBackward0"} <= ops
    assert not any("ScaledDotProduct" in op or "Attention" in op for op in ops), ops


def test_attention_dropout_drops_and_rescales_weights():
    """With v the identity over keys and w_o the identity, the output holds
    the attention weights after dropout: each is 0 or the weight without
    dropout over 1 - p, and about a fraction p of the visible ones is 0."""
    p, t, n_keys, head = 0.3, 16, 24, 32
    attn = RelativeMultiHeadAttention(H * head, H, p)
    with torch.no_grad():
        attn.w_o.weight.copy_(torch.eye(H * head))
        attn.u.normal_(0, 0.5)
        attn.v.normal_(0, 0.5)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, t, head, generator=g, requires_grad=True)
    k = torch.randn(B, H, n_keys, head, generator=g)
    v = torch.eye(n_keys, head).expand(B, H, n_keys, head)
    mask = attention_mask(torch.ones(B, n_keys, dtype=torch.bool), t, torch.float32)
    r = torch.randn(n_keys, H, head, generator=g)
    attn.eval()
    kept, _ = attn(q, k, v, mask, r)
    attn.train()
    torch.manual_seed(5)
    dropped, _ = attn(q, k, v, mask, r)
    kept = kept.view(B, t, H, head)[..., :n_keys]
    dropped = dropped.view(B, t, H, head)[..., :n_keys]
    visible = kept > 0
    zero = dropped == 0
    scaled = torch.isclose(dropped, kept / (1 - p), rtol=1e-5, atol=1e-7)
    assert bool((zero | scaled)[visible].all())
    assert abs(zero[visible].float().mean().item() - p) < 0.05
    dropped.sum().backward()  # dropout runs in the path with gradients
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_rel_shift_padded_is_a_view_that_matches_the_loop():
    g = torch.Generator().manual_seed(0)
    for t, k in [(1, 1), (3, 7), (5, 5), (4, 12)]:
        x = torch.randn(2, 3, t, k, generator=g)
        padded = torch.nn.functional.pad(x, (1, 0))
        out = rel_shift_padded(padded)
        assert out.data_ptr() == padded.data_ptr() + t * padded.element_size()
        for i in range(t):
            for j in range(k - t + i + 1):  # the keys query i may see
                assert torch.equal(out[..., i, j], x[..., i, j + t - 1 - i])
