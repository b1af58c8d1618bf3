"""Dtypes through the Python API: a model cast to bf16 trains and samples
(memories take the parameters' dtype), and a decoder keeps the autocast it
was built under (its cache in the compute dtype) wherever it is called."""

import pytest
import torch
import torch.nn.functional as F

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.model.sampling import IncrementalDecoder, generate


def make(compression="conv", loss="attention"):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=8, mem_len=8, cmem_len=4,
                      compression_rate=2, compression=compression, compression_loss=loss, init_std=0.2)
    return CompressiveTransformerLM(cfg)


def segment_logits(model, tokens):
    memory, parts = None, []
    for s in range(tokens.shape[1] // 8):
        out = model(tokens[:, s * 8 : (s + 1) * 8], memory)
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), tokens[:, s * 8 : (s + 1) * 8].flatten())
        (loss + out.aux_loss).backward()
        memory, parts = out.memory, parts + [out.logits.detach().float()]
    return torch.cat(parts, dim=1), memory


@pytest.mark.parametrize("compression,loss", [("conv", "attention"), ("conv", "bptt"), ("most_used", "none"),
                                              ("dilated_conv", "autoencoding")])
def test_a_bf16_model_trains_and_samples(compression, loss):
    tokens = torch.randint(0, 30, (2, 8 * 4), generator=torch.Generator().manual_seed(1))
    want, _ = segment_logits(make(compression, loss), tokens)
    model = make(compression, loss).to(torch.bfloat16)
    got, memory = segment_logits(model, tokens)
    assert memory.mem.dtype == memory.cmem.dtype == torch.bfloat16
    assert all(p.grad is None or p.grad.dtype == torch.bfloat16 for p in model.parameters())
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # bf16 rounding, not another model
    seq = generate(model.eval(), tokens[:, :3], 12, top_k=1)
    assert seq.shape == (2, 15)


def test_a_decoder_built_under_autocast_keeps_it_outside():
    model = make().eval()
    tokens = torch.randint(0, 30, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = IncrementalDecoder(model, 2)
        want = torch.cat([inside.feed(tokens[:, i : i + 1]) for i in range(20)], dim=1)
        outside = IncrementalDecoder(model, 2)
    assert outside.buf.k[0].dtype == outside.r[0].dtype == torch.bfloat16  # the cache in the compute dtype
    assert outside.buf.hidden.dtype == torch.float32  # the next memories in the parameters' dtype
    got = torch.cat([outside.feed(tokens[:, i : i + 1]) for i in range(20)], dim=1)
    assert torch.equal(got, want)
    fp32 = IncrementalDecoder(model, 2).feed(tokens)
    assert fp32.dtype == torch.float32 and (got.float() - fp32).abs().max() < 0.05 * fp32.abs().max()
