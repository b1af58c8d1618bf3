"""Runtime execution choices compute the same model: activation
checkpointing gives the gradients of the plain path while keeping fewer
activations, and FlexAttention gives the logits of the SDPA path with one
block mask per shape, however the memories fill or reset."""

import pytest
import torch
import torch.nn.functional as F

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.model.execution import Execution


def make(compression="conv", loss="attention", dropout=0.0):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=8, mem_len=8, cmem_len=4,
                      compression_rate=2, compression=compression, compression_loss=loss, dropout=dropout)
    model = CompressiveTransformerLM(cfg)
    with torch.no_grad():
        for blk in model.blocks:  # non-zero position biases, so the position term matters
            blk.attn.u.normal_(0, 0.5)
            blk.attn.v.normal_(0, 0.5)
    return model


def train_segments(model, tokens, segments=4):
    """Per segment: loss backward (memory carried), then the gradients, the
    bytes autograd saved outside checkpointed regions, and the memory."""
    saved = [0]

    def pack(x):
        saved[0] += x.numel() * x.element_size()
        return x

    memory, results = None, []
    torch.manual_seed(7)  # dropout masks
    for s in range(segments):
        model.zero_grad(set_to_none=True)
        saved[0] = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = model(tokens[:, s * 8 : (s + 1) * 8], memory)
        ce = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, s * 8 + 1 : (s + 1) * 8 + 1].flatten())
        (ce + out.aux_loss).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((grads, saved[0], out.memory))
        memory = out.memory
    return results


@pytest.mark.parametrize("compression,loss", [("conv", "attention"), ("conv", "bptt"), ("most_used", "none"),
                                              ("dilated_conv", "autoencoding")])
def test_activation_checkpointing_gives_the_plain_gradients_and_keeps_less(compression, loss):
    tokens = torch.randint(0, 30, (3, 8 * 4 + 1), generator=torch.Generator().manual_seed(3))
    model = make(compression, loss, dropout=0.1)
    plain = train_segments(model, tokens)
    model.set_execution(Execution(activation_checkpointing=True))
    checkpointed = train_segments(model, tokens)
    for (g_plain, saved_plain, m_plain), (g_ckpt, saved_ckpt, m_ckpt) in zip(plain, checkpointed):
        assert g_plain.keys() == g_ckpt.keys()
        for name in g_plain:
            assert torch.allclose(g_plain[name], g_ckpt[name], atol=1e-7, rtol=1e-5), name
        assert torch.equal(m_plain.mem, m_ckpt.mem) and torch.equal(m_plain.cmem, m_ckpt.cmem)
        assert saved_ckpt < 0.5 * saved_plain  # the blocks' activations are not kept


def flex_unavailable() -> str | None:
    """Why compiled FlexAttention cannot run on this CPU (it needs inductor
    and a C++ compiler), or None when it can."""
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.zeros(1, 1, 4, 4)
    try:
        torch.compile(flex_attention)(q, q, q)
    except Exception as err:  # noqa: BLE001 - whatever the compiler raises
        return f"compiled FlexAttention does not run on this CPU ({type(err).__name__}: {str(err)[:160]})"
    return None


@pytest.mark.parametrize("compile_backend", [None, "aot_eager"], ids=["eager_blocks", "compiled_blocks"])
@pytest.mark.parametrize("compression,loss", [("conv", "attention"), ("conv", "bptt"), ("mean_pool", "none")])
def test_flex_attention_gives_the_sdpa_logits(compression, loss, compile_backend):
    model = make(compression, loss).eval()
    tokens = torch.randint(0, 30, (3, 8 * 5), generator=torch.Generator().manual_seed(4))
    reset = torch.tensor([False, True, False])

    def logits(execution):
        model.set_execution(execution)
        memory, parts, partly_filled = None, [], False
        with torch.no_grad():  # FlexAttention has no backward on CPU
            for s in range(5):
                out = model(tokens[:, s * 8 : (s + 1) * 8], memory, reset if s == 3 else None)
                memory, parts = out.memory, parts + [out.logits]
                partly_filled |= bool(memory.cmem_mask.any() and not memory.cmem_mask.all())
        assert partly_filled  # empty and filled slots met
        return torch.cat(parts, dim=1)

    reason = flex_unavailable()
    if reason:
        pytest.skip(reason)
    want = logits(Execution(attention="sdpa"))
    assert model.block_masks.hits + model.block_masks.misses == 0
    got = logits(Execution(attention="flex", compile_backend=compile_backend))
    # Filling memories, a reset row and full memories: one block mask for all five forwards.
    assert (model.block_masks.misses, model.block_masks.hits) == (1, 4)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_block_mask_cache_builds_once_per_shape():
    cache = make().block_masks
    patterns = [torch.zeros(2, 20, dtype=torch.bool), torch.ones(2, 20, dtype=torch.bool)]
    patterns[0][:, 12:] = True  # empty memories (12 slots), then the 8 segment keys
    patterns.append(patterns[1].clone())
    patterns[2][1, :12] = False  # row 1 reset
    masks = [cache.flex_mask(valid, 8) for valid in patterns]  # filling, full, a reset row
    assert all(m.block_mask is masks[0].block_mask for m in masks)
    assert all(m.key_valid is valid for m, valid in zip(masks, patterns))  # validity travels beside the mask
    longer = torch.ones(2, 36, dtype=torch.bool)  # evaluation with longer memories
    other = [cache.flex_mask(longer, 8), cache.flex_mask(longer[:, :33], 5), cache.flex_mask(longer, 8)]
    assert other[0].block_mask is other[2].block_mask and other[1].block_mask is not other[0].block_mask
    assert (cache.misses, cache.hits) == (3, 3)
    # Causality alone: query i (key index K - T + i) sees keys 0 .. K - T + i.
    q, kv = torch.arange(5)[:, None], torch.arange(33)[None, :]
    zero = torch.zeros((), dtype=torch.long)
    allowed = other[1].block_mask.mask_mod(zero, zero, q, kv)
    assert torch.equal(allowed, kv <= q + 28)
