"""Adaptive input and adaptive softmax change nothing of the memories: every
compression choice of the recipes, and every compression function of the
table, trains through the trainer with them over several optimizer steps,
and every weight a loss reaches moves, every cluster's included."""

import json

import pytest
import torch

from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.train.trainer import Trainer

from tests.core.train.test_every_compression_trains import CASES

STEPS = 4
#: The synthetic data's 32 symbols in four clusters: [0, 8) [8, 16) [16, 24) [24, 32).
ADAPTIVE = ["+model.adaptive_cutoffs=[8,16,24]", "+model.adaptive_div=2", "model.tie_embeddings=true"]


@pytest.mark.parametrize("overrides", CASES)
def test_every_compression_trains_with_adaptive_input_and_softmax(tmp_path, overrides):
    raw = compose_recipe(["experiment=smoke/synthetic", *overrides, *ADAPTIVE, f"trainer.steps={STEPS}",
                          "trainer.log_every=1", "trainer.eval_every=100", "trainer.save_every=100",
                          "trainer.eval_max_batches=1", "trainer.final_eval=false", "trainer.sample_tokens=0",
                          "trainer.eval_sample_tokens=0"], "test")
    cfg, frontend = build_run(raw)
    assert cfg.model.adaptive_cutoffs == (8, 16, 24) and cfg.model.compresses
    trainer = Trainer(cfg, frontend, tmp_path)
    model = trainer.model
    assert model.embed.tables is model.head.tables
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    final = trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == STEPS and all(torch.isfinite(torch.tensor([r["ce"], r["aux"]])).all() for r in train)
    assert torch.isfinite(torch.tensor(final["nll"]))
    assert all(m.cmem_mask.any() for m in trainer.memories), "compressed memory must be in use"
    params = dict(model.named_parameters())
    moved = {n for n, p in params.items() if not torch.equal(before[n], p.detach())}
    assert moved == {n for n, p in params.items() if p.requires_grad}
    assert {f"embed.tables.weights.{i}" for i in range(4)} <= moved
    assert {f"embed.tables.projections.{i}" for i in (1, 2, 3)} <= moved
    if cfg.model.compression_loss != "none":
        assert any(n.startswith("compressors.") for n in moved)
