"""Non-finite numbers in the loss, in a gradient or in an input memory: the
step is skipped and logged, training goes on with clean state; after
trainer.max_nonfinite in a row the run stops naming the last good
checkpoint, and that checkpoint is intact."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.train.checkpoint import load_checkpoint
from ct_core.train.trainer import NonFiniteLossError, Trainer


def make_trainer(run_dir, *overrides):
    raw = compose_recipe(["experiment=smoke/synthetic", "trainer.steps=20", "trainer.save_every=5",
                          "trainer.eval_every=100", "trainer.sample_tokens=0", "trainer.max_nonfinite=3",
                          *overrides], "test")
    cfg, frontend = build_run(raw)
    return Trainer(cfg, frontend, run_dir)


def on_calls(calls: range, poison):
    """A forward wrapper applying ``poison(memory)`` on the given (1-based) calls."""
    def install(trainer):
        forward, count = trainer.forward, {"n": 0}

        def wrapped(x, memory=None, reset=None, **kwargs):
            count["n"] += 1
            if count["n"] in calls and memory is not None:
                memory = poison(memory)
            return forward(x, memory, reset, **kwargs)

        trainer.forward = wrapped
    return install


def nan_memory(memory):
    return dataclasses.replace(memory, mem=torch.full_like(memory.mem, float("nan")))


def nan_gradients(calls: range):
    """Gradients of the embedding turn NaN during the given optimizer steps."""
    def install(trainer):
        step = {"n": 0}
        real = trainer.train_step

        def train_step():
            step["n"] += 1
            handle = None
            if step["n"] in calls:
                handle = trainer.model.embed.weight.register_hook(lambda g: g * float("nan"))
            try:
                return real()
            finally:
                if handle is not None:
                    handle.remove()

        trainer.train_step = train_step
    return install


def inf_loss(calls: range):
    def install(trainer):
        forward, count = trainer.forward, {"n": 0}

        def wrapped(*args, **kwargs):
            out = forward(*args, **kwargs)
            count["n"] += 1
            if count["n"] in calls:
                out.nll = out.nll + float("inf")
            return out

        trainer.forward = wrapped
    return install


TRANSIENT = {"inf loss": inf_loss(range(8, 10)), "nan gradient": nan_gradients(range(8, 10)),
             "nan input memory": on_calls(range(8, 10), nan_memory)}


def skipped(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["nonfinite_skipped"] for r in rows if "nonfinite_skipped" in r]


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
def test_a_transient_fault_is_skipped_logged_and_training_goes_on(tmp_path, fault):
    trainer = make_trainer(tmp_path)
    TRANSIENT[fault](trainer)
    trainer.fit()
    assert trainer.step == 20 and skipped(tmp_path) == [1, 2]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(v).all() for v in trainer.optimizer.state_dict()["state"][0].values()
               if isinstance(v, torch.Tensor))
    for memory in trainer.memories:  # the poisoned memory was not kept
        assert torch.isfinite(memory.mem).all() and torch.isfinite(memory.cmem).all()


PERSISTENT = {"nan gradient": nan_gradients(range(8, 10**6)),
              "nan input memory": on_calls(range(8, 10**6), nan_memory)}


@pytest.mark.parametrize("fault", sorted(PERSISTENT))
def test_a_lasting_fault_stops_the_run_at_an_intact_checkpoint(tmp_path, fault):
    trainer = make_trainer(tmp_path)
    PERSISTENT[fault](trainer)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    last = tmp_path / "checkpoints" / "last.pt"
    assert f"3 steps in a row at step 8; last good checkpoint: {last}" in str(err.value)
    payload = load_checkpoint(last, for_resume=True)
    assert payload["step"] == 5
    assert all(torch.isfinite(v).all() for v in payload["model"].values())
    assert all(torch.isfinite(v).all() for v in payload["memory"].values() if v.is_floating_point())
