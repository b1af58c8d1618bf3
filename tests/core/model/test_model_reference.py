"""The model equals slow, plainly written references: with cmem_len=0 a
Transformer-XL, with no memory a vanilla transformer, otherwise a plain
Compressive Transformer; the rel-shift equals an explicit loop; streaming
segments equals one full causal forward; logits never see the future."""

import pytest
import torch

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.model.relative_position import rel_shift
from tests.core.model.reference import ReferenceCT, sinusoid


def make_model(**kw) -> CompressiveTransformerLM:
    torch.manual_seed(0)
    base = dict(vocab_size=50, n_layers=2, d_model=32, n_heads=4, d_ff=64, seq_len=8)
    base.update(kw)
    model = CompressiveTransformerLM(ModelConfig(**base))
    # Non-zero u/v biases so the test also checks their placement.
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.u.normal_(0, 0.5)
            blk.attn.v.normal_(0, 0.5)
    return model.eval()


def test_rel_shift_matches_explicit_loop():
    torch.manual_seed(0)
    for t, k in [(1, 1), (3, 7), (5, 5), (4, 12)]:
        x = torch.randn(2, 3, t, k)
        out = rel_shift(x)
        for i in range(t):
            for j in range(k):
                src = j + t - 1 - i
                if j <= k - t + i:  # keys query i may see
                    assert torch.equal(out[..., i, j], x[..., i, src])


def test_sinusoid_positions_match_formula():
    from ct_core.model.relative_position import sinusoid_positions

    got = sinusoid_positions(6, 8)
    want = sinusoid(torch.arange(5, -1, -1), 8)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    "mem_len,cmem_len,norm",
    [(0, 0, "pre"), (0, 0, "post"), (8, 0, "pre"), (12, 0, "post"), (8, 4, "pre"), (4, 8, "post"), (0, 4, "pre")],
)
def test_segments_match_plain_reference(mem_len, cmem_len, norm):
    """cmem_len=0 is Transformer-XL, both 0 is vanilla; otherwise a full CT
    with mean pooling — all against the plain reference over 6 segments."""
    c = 2
    model = make_model(
        mem_len=mem_len, cmem_len=cmem_len, compression_rate=c, compression="mean_pool",
        compression_loss="none", norm=norm,
    )
    ref = ReferenceCT(model, mem_len, cmem_len, c)
    torch.manual_seed(1)
    tokens = torch.randint(0, 50, (2, 6 * 8))
    memory = None
    with torch.no_grad():
        for s in range(6):
            seg = tokens[:, s * 8 : (s + 1) * 8]
            out = model(seg, memory)
            memory = out.memory
            want = ref.forward(seg)
            assert torch.allclose(out.logits, want, atol=1e-5), f"segment {s}"


def test_streaming_equals_one_full_forward():
    """With mem_len >= history and no compression, feeding segments equals
    one causal forward over everything."""
    model = make_model(seq_len=24, mem_len=24, cmem_len=0)
    torch.manual_seed(2)
    tokens = torch.randint(0, 50, (3, 24))
    with torch.no_grad():
        full = model(tokens).logits
        memory, parts = None, []
        for a, b in [(0, 5), (5, 13), (13, 16), (16, 24)]:
            out = model(tokens[:, a:b], memory)
            memory = out.memory
            parts.append(out.logits)
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_causality_within_and_across_segments():
    model = make_model(mem_len=8, cmem_len=4, compression_rate=2, compression="conv")
    torch.manual_seed(3)
    first = torch.randint(0, 50, (2, 8))
    seg = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        memory = model(first).memory
        base = model(seg, memory).logits
        for t in range(8):
            changed = seg.clone()
            changed[:, t:] = (changed[:, t:] + 7) % 50
            out = model(changed, memory).logits
            assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6)
            assert not torch.allclose(out[:, t], base[:, t], atol=1e-4)
