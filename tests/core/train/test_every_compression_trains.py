"""Every compression choice the recipes offer, and every compression
function of the table, trains through the trainer over several optimizer
steps: finite losses, the compressor's weights move when a loss trains them,
and so do the other weights."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from ct_core.cli.common import compose_recipe, recipes_dir
from ct_core.cli.run_setup import build_run
from ct_core.model.compression import COMPRESSORS
from ct_core.train.trainer import Trainer

CHOICES = sorted(p.stem for p in (recipes_dir() / "compression").glob("*.yaml"))
#: The choices of the paper (and its baselines) that the recipes must offer.
PAPER_CHOICES = {"conv_attention", "conv_autoencoding", "conv_bptt", "dilated_conv_attention", "max_pool",
                 "mean_pool", "most_used", "none"}
STEPS = 6


def recipe_compression(choice: str) -> str:
    return OmegaConf.load(recipes_dir() / "compression" / f"{choice}.yaml")["compression"]


#: Compression functions of the table that no recipe choice uses are trained
#: through overrides (by Algorithm 2 when they have weights), so a new entry
#: in COMPRESSORS is covered whether or not it has a recipe.
UNCOVERED = sorted(set(COMPRESSORS) - {recipe_compression(c) for c in CHOICES})
CASES = [pytest.param([f"compression={c}"], id=c) for c in CHOICES] + [
    pytest.param([f"compression.compression={name}",
                  f"compression.compression_loss={'attention' if COMPRESSORS[name].has_parameters else 'none'}"],
                 id=name)
    for name in UNCOVERED
]


def test_the_recipes_offer_every_compression_of_the_paper():
    assert PAPER_CHOICES <= set(CHOICES)


@pytest.mark.parametrize("overrides", CASES)
def test_choice_trains_over_several_steps(tmp_path, overrides, capsys):
    raw = compose_recipe(["experiment=smoke/synthetic", *overrides, f"trainer.steps={STEPS}",
                          "trainer.log_every=1", "trainer.eval_every=100", "trainer.save_every=100",
                          "trainer.final_eval=false", "trainer.eval_max_batches=1", "trainer.sample_tokens=0",
                          "trainer.eval_sample_tokens=0"], "test")
    cfg, frontend = build_run(raw)
    trainer = Trainer(cfg, frontend, tmp_path)
    frozen_note = "compressor weights frozen: compression_loss=none trains nothing of f_c"
    frozen = cfg.model.compression_loss == "none" and COMPRESSORS[cfg.model.compression].has_parameters
    assert (frozen_note in capsys.readouterr().err) == frozen
    model = trainer.model
    assert len(model.compressors) == cfg.model.n_layers
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert trainer.step == STEPS and len(losses) == STEPS
    assert all(loss is not None and torch.isfinite(torch.tensor(loss)) for loss in losses)
    params = dict(model.named_parameters())
    moved = {n for n, p in params.items() if not torch.equal(before[n], p.detach())}
    compressor = {n for n in params if n.startswith("compressors.")}
    trained_compressor = {n for n in compressor if params[n].requires_grad}
    # Whatever a loss trains has moved, and nothing else.
    assert moved == {n for n, p in params.items() if p.requires_grad}
    assert bool(trained_compressor) == (cfg.model.compression_loss != "none")
    if cfg.model.compression_loss == "none" and COMPRESSORS[cfg.model.compression].has_parameters:
        assert compressor and not trained_compressor  # conv weights exist but nothing trains them
