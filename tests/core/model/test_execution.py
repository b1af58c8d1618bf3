"""Runtime execution choices compute the same model: activation
checkpointing gives the gradients of the plain path while keeping fewer
activations, and FlexAttention gives the logits of the SDPA path."""

import pytest
import torch
import torch.nn.functional as F

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.model.attention import flex_block_mask
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
def test_flex_attention_gives_the_sdpa_logits(compression, loss, compile_backend, monkeypatch):
    import ct_core.model.lm as lm

    built = []
    monkeypatch.setattr(lm, "flex_block_mask", lambda *args: built.append(1) or flex_block_mask(*args))
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
        assert partly_filled  # the block mask met empty and filled slots
        return torch.cat(parts, dim=1)

    reason = flex_unavailable()
    if reason:
        pytest.skip(reason)
    want = logits(Execution(attention="sdpa"))
    assert not built
    got = logits(Execution(attention="flex", compile_backend=compile_backend))
    assert len(built) == 5  # every forward ran FlexAttention
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
