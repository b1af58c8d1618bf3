"""bench.kv_cache_cost: the decoder's bits per token over documents equal
the training forward's NLL over the same documents (memories empty at each
document's start, carried across its segments); the bf16 cache changes
them by a little, not by nothing."""

import math

import numpy as np
import torch

from bench.kv_cache_cost import split_bits
from ct_core import CompressiveTransformerLM, ModelConfig


def forward_bits(model, docs) -> tuple[float, int]:
    nll, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            tokens = torch.as_tensor(doc)[None]
            memory = None
            for start in range(0, tokens.shape[1] - 1, model.cfg.seq_len):
                x = tokens[:, start : start + model.cfg.seq_len]
                y = tokens[:, start + 1 : start + 1 + model.cfg.seq_len]
                out = model(x[:, : y.shape[1]], memory, targets=y)
                memory = out.memory
                nll += out.nll.sum().item()
                count += y.numel()
    return nll / count / math.log(2), count


def test_decoder_bits_equal_the_training_forward_and_bf16_moves_them_slightly():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=29, n_layers=2, d_model=32, n_heads=4, d_ff=48, seq_len=8, mem_len=8, cmem_len=4,
                      compression_rate=2, compression="conv", compression_loss="attention")
    model = CompressiveTransformerLM(cfg).eval()
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 29, size=n) for n in (37, 16, 9)]  # segments cut, whole, and one token over
    bits, count = split_bits(model, docs, None)
    want, want_count = forward_bits(model, docs)
    assert count == want_count == 36 + 15 + 8
    assert abs(bits - want) < 1e-5
    bf16, _ = split_bits(model, docs, torch.bfloat16)
    assert 0 < abs(bf16 - bits) < 1e-2
