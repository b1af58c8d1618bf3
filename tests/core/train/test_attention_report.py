"""Attention by distance: buckets conserve the attention mass, uniform
attention gives the exact expected shares, only segments with full memories
count, and ct-eval writes the figure and its JSON."""

import json

import numpy as np
import pytest
import torch

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.train.attention_report import attention_by_distance, bucket_bounds

T, M, C = 8, 8, 4


def model(compression="mean_pool"):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=T, mem_len=M, cmem_len=C,
                      compression_rate=2, compression=compression, compression_loss="none")
    return CompressiveTransformerLM(cfg).eval()


def docs(n=3, length=8 * T + 1, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 20, size=length) for _ in range(n)]


def test_bucket_bounds_cover_every_key_once():
    assert bucket_bounds(8, 6) == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 7), (7, 8)]
    assert bucket_bounds(4, 6) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert bucket_bounds(0, 6) == []


def test_mass_is_conserved_and_only_full_memories_count():
    report = attention_by_distance(model("conv"), docs(), batch_size=3, mem_len=M, cmem_len=C,
                                   device=torch.device("cpu"))
    assert sum(report["mean"]) == pytest.approx(1.0, abs=1e-5)
    for layer in report["per_layer"]:
        assert sum(layer) == pytest.approx(1.0, abs=1e-5)
    # 8 segments per document; memory (8) is full from segment 2 on and the
    # compressed memory (4 slots of 2) once 8 more tokens were evicted: segment 3.
    assert report["segments"] == 3 * (8 - 2)
    assert set(report["mean_by_region"]) == {"cmem", "mem", "segment"}


def test_uniform_attention_gives_the_exact_shares():
    lm = model()
    with torch.no_grad():  # zero queries and biases: every score is 0, attention is uniform
        for block in lm.blocks:
            block.attn.w_q.weight.zero_()
            block.attn.u.zero_()
            block.attn.v.zero_()
    report = attention_by_distance(lm, docs(), batch_size=3, mem_len=M, cmem_len=C, device=torch.device("cpu"))
    prefix = C + M
    expected = []
    spans = [(0, 1), (1, 2), (2, 3), (3, 4)]  # cmem: 4 buckets of one slot
    spans += [(C + a, C + b) for a, b in bucket_bounds(M, 6)] + [(prefix + a, prefix + b) for a, b in bucket_bounds(T, 6)]
    for a, b in spans:
        # query i sees the prefix and segment keys 0..i, each with weight 1 / (prefix + i + 1)
        share = [max(0, min(b, prefix + i + 1) - a) / (prefix + i + 1) for i in range(T)]
        expected.append(sum(share) / T)
    assert np.allclose(report["mean"], expected, atol=1e-6)


def test_ct_eval_writes_the_attention_figure_and_json(tmp_path):
    from ct_core.cli import evaluate
    from ct_core.cli.common import compose_recipe
    from ct_core.cli.run_setup import build_run
    from ct_core.train.trainer import Trainer

    raw = compose_recipe(["experiment=smoke/synthetic", "trainer.steps=2", "trainer.final_eval=false",
                          "trainer.eval_max_batches=1", "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0"],
                         "test")
    cfg, frontend = build_run(raw)
    Trainer(cfg, frontend, tmp_path).fit()
    report = evaluate.run(tmp_path / "checkpoints" / "last.pt", ["split=valid"], attention_report=True)
    shown = report["attention_report"]
    assert open(shown["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(open(shown["json"]).read())
    assert saved["segments"] == shown["segments"] > 0 and len(saved["mean"]) == len(saved["buckets"]) == 18
    assert sum(shown["mean_by_region"].values()) == pytest.approx(1.0, abs=1e-5)
