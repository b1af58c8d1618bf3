"""Compiled training (trainer.compile) for every compression choice: the
same losses as eager, and no graph is compiled after the first step, neither
on later steps nor after a resume. The aot_eager backend traces the same
graphs as inductor but compiles in seconds."""

import pytest
import torch
from torch._dynamo.utils import counters

from ct_core.cli.common import compose_recipe, recipes_dir
from ct_core.cli.run_setup import build_run
from ct_core.train.trainer import Trainer

CHOICES = sorted(p.stem for p in (recipes_dir() / "compression").glob("*.yaml"))
# Every choice compiled; activation checkpointing inside the compiled blocks
# for one choice of each kind of memory update (loss, bptt, usage).
CASES = [(c, False) for c in CHOICES] + [(c, True) for c in ("conv_attention", "conv_bptt", "most_used")]


def make_trainer(run_dir, choice, *overrides):
    raw = compose_recipe(["experiment=smoke/synthetic", f"compression={choice}", "trainer.steps=10",
                          "trainer.eval_every=100", "trainer.save_every=100", "trainer.sample_tokens=0",
                          "trainer.eval_sample_tokens=0", "model.dropout=0.1", *overrides], "test")
    cfg, frontend = build_run(raw)
    return Trainer(cfg, frontend, run_dir)


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def losses(trainer, steps):
    torch.manual_seed(1)
    return [float(trainer.train_step()["loss"]) for _ in range(steps)]


@pytest.mark.parametrize("choice,checkpointing", CASES)
def test_compiled_training_compiles_once_and_matches_eager(tmp_path, choice, checkpointing):
    options = [f"trainer.activation_checkpointing={str(checkpointing).lower()}"]
    eager = losses(make_trainer(tmp_path / "eager", choice, *options), 3)

    torch._dynamo.reset()
    counters.clear()
    trainer = make_trainer(tmp_path / "compiled", choice, "trainer.compile=true", "trainer.compile_backend=aot_eager",
                           *options)
    torch.manual_seed(1)
    compiled = [float(trainer.train_step()["loss"])]
    first = compiled_graphs()
    assert first > 0
    compiled += [float(trainer.train_step()["loss"]) for _ in range(2)]
    assert compiled_graphs() == first, "a later step compiled again"
    assert compiled == pytest.approx(eager, rel=1e-5)
    trainer.save()

    torch._dynamo.reset()
    counters.clear()
    resumed = make_trainer(tmp_path / "compiled", choice, "trainer.compile=true",
                           "trainer.compile_backend=aot_eager", *options)
    resumed.resume(resumed.checkpoints.latest())
    for _ in range(2):
        assert resumed.train_step() is not None
    assert compiled_graphs() == first, "the resumed run compiled more graphs than a fresh one"
