"""Evaluation on a world size that does not divide eval.batch_size (two
gloo processes, three lanes): idle padding lanes make it count the same
tokens and the same NLL as one process."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.train.distributed import DistContext
from ct_core.train.evaluator import evaluate

LANES = 3
WORLD = 2


def documents(n_docs):
    rng = np.random.default_rng(n_docs)
    return [rng.integers(0, 30, size=int(n)) for n in rng.integers(40, 160, size=n_docs)]


def make_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=16, mem_len=16, cmem_len=8,
                      compression_rate=2, compression="conv", compression_loss="attention")
    return CompressiveTransformerLM(cfg)


def evaluate_all(ctx):
    """(NLL sum, tokens) for five documents (more than lanes) and for two (fewer)."""
    model = make_model()
    return [list(map(float, (r.nll_sum, r.n_tokens)))
            for r in (evaluate(model, documents(n), LANES, 16, 8, torch.device("cpu"), ctx=ctx) for n in (5, 2))]


def worker(rank, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        results = evaluate_all(DistContext(rank, WORLD, rank))
        if rank == 0:
            out.write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_two_processes_evaluate_three_lanes_like_one(tmp_path):
    out = tmp_path / "result.json"
    mp.spawn(worker, args=(str(tmp_path / "store"), out), nprocs=WORLD, join=True)
    single = evaluate_all(DistContext())
    distributed = json.loads(out.read_text())
    for (nll_one, tokens_one), (nll_two, tokens_two) in zip(single, distributed):
        assert tokens_two == tokens_one > 0
        assert nll_two == pytest.approx(nll_one, rel=1e-6)
