"""Rows of a batch never interact, and resetting a row equals a fresh start for it."""

import pytest
import torch

from ct_core import CompressiveTransformerLM, ModelConfig


def model_for(compression="conv", loss="attention"):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=8, mem_len=8,
                      cmem_len=4, compression_rate=2, compression=compression, compression_loss=loss)
    return CompressiveTransformerLM(cfg).eval()


@pytest.mark.parametrize("compression,loss", [("conv", "attention"), ("most_used", "none")])
def test_rows_never_interact(compression, loss):
    model = model_for(compression, loss)
    torch.manual_seed(1)
    tokens = torch.randint(0, 40, (3, 40))
    with torch.no_grad():
        mem_all, mem_one = None, None
        for s in range(5):
            seg = tokens[:, s * 8 : (s + 1) * 8]
            out_all = model(seg, mem_all)
            out_one = model(seg[1:2], mem_one)
            mem_all, mem_one = out_all.memory, out_one.memory
            assert torch.allclose(out_all.logits[1:2], out_one.logits, atol=1e-5)


def test_reset_row_equals_fresh_start_and_leaves_others():
    model = model_for()
    torch.manual_seed(2)
    tokens = torch.randint(0, 40, (3, 48))
    reset_at = 3
    with torch.no_grad():
        mem, mem_plain, mem_fresh = None, None, None
        for s in range(6):
            seg = tokens[:, s * 8 : (s + 1) * 8]
            reset = torch.tensor([False, s == reset_at, False])
            out = model(seg, mem, reset=reset)
            plain = model(seg, mem_plain)
            mem, mem_plain = out.memory, plain.memory
            assert torch.allclose(out.logits[[0, 2]], plain.logits[[0, 2]], atol=1e-6)
            if s >= reset_at:
                fresh = model(seg[1:2], mem_fresh)
                mem_fresh = fresh.memory
                assert torch.allclose(out.logits[1:2], fresh.logits, atol=1e-5)
        assert not torch.allclose(out.logits[1:2], plain.logits[1:2], atol=1e-3)
