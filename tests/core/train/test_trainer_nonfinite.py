"""A non-finite loss skips the step, is logged, and stops the run with a clear
message after trainer.max_nonfinite in a row; the last checkpoint survives."""

import json

import pytest
import torch

from ct_core.train.checkpoint import load_checkpoint
from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.train.optim import build_optimizer, build_scheduler
from ct_core.train.trainer import NonFiniteLossError, Trainer


def make_trainer(tmp_path, *overrides):
    raw = compose_recipe(["experiment=smoke/synthetic", "trainer.steps=30", "trainer.save_every=5",
                          "trainer.eval_every=100", "trainer.sample_tokens=0", *overrides], "test")
    cfg, fe = build_run(raw)
    return Trainer(cfg, fe, tmp_path)


def poison_after(trainer, good_steps, stop_after=None):
    """Make the model's per-token losses NaN after ``good_steps`` calls (until ``stop_after``)."""
    forward = trainer.model.forward
    calls = {"n": 0}

    def patched(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > good_steps and (stop_after is None or calls["n"] <= stop_after):
            out.nll = out.nll * float("nan")
        return out

    trainer.model.forward = patched
    trainer.forward = trainer.model


def test_nan_steps_are_skipped_then_training_continues(tmp_path):
    trainer = make_trainer(tmp_path, "trainer.max_nonfinite=5")
    poison_after(trainer, good_steps=7, stop_after=10)  # three bad steps in a row
    trainer.fit()
    assert trainer.step == 30
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_skipped"] for r in records if "nonfinite_skipped" in r] == [1, 2, 3]


def test_too_many_nans_stop_with_a_clear_message_and_keep_the_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, "trainer.max_nonfinite=3")
    poison_after(trainer, good_steps=12)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "non-finite for 3 steps in a row at step 13" in msg and "last good checkpoint: " in msg and "last.pt" in msg
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt", for_resume=True)
    assert payload["step"] == 10
    assert all(torch.isfinite(v).all() for v in payload["model"].values())


def skipping_on_device(trainer):
    """The CUDA path on CPU: a fused optimizer that skips updates on the device."""
    trainer.skip_on_device = True
    trainer.optimizer = build_optimizer(trainer.model, trainer.cfg.optim, fused=True)
    trainer.scheduler = build_scheduler(trainer.optimizer, trainer.cfg.optim, trainer.cfg.trainer.steps)
    return trainer


def test_updates_skipped_on_the_device_leave_weights_state_and_memories(tmp_path):
    trainer = skipping_on_device(make_trainer(tmp_path, "trainer.max_nonfinite=5", "trainer.log_every=4"))
    poison_after(trainer, good_steps=2, stop_after=4)
    for _ in range(2):
        trainer.train_step()
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    moments = [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]
    memories = [m.mem.clone() for m in trainer.memories]
    for _ in range(2):  # poisoned: skipped on the device, no host read
        trainer.train_step()
    assert all(torch.equal(weights[n], p) for n, p in trainer.model.named_parameters())
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, trainer.optimizer.state.values()))
    assert all(torch.equal(a, m.mem) for a, m in zip(memories, trainer.memories))
    trainer.fit()  # the skips are reported at the next logging step (step 8)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["nonfinite_skipped"]) for r in records if "nonfinite_skipped" in r] == [(8, 2)]


def test_too_many_skipped_on_the_device_stop_at_the_next_logging_step(tmp_path):
    trainer = skipping_on_device(make_trainer(tmp_path, "trainer.max_nonfinite=3", "trainer.log_every=4"))
    poison_after(trainer, good_steps=12)
    with pytest.raises(NonFiniteLossError, match="non-finite for 4 steps in a row at step 17"):
        trainer.fit()


def test_a_step_skipping_on_the_device_never_waits_for_it(tmp_path, monkeypatch):
    trainer = skipping_on_device(make_trainer(tmp_path, "compression=conv_bptt"))
    trainer.train_step()

    def host_read(*args, **kwargs):
        raise AssertionError("the step read a tensor on the host")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__format__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    stats = trainer.train_step()
    monkeypatch.undo()
    assert trainer.step == 2 and torch.isfinite(stats["loss"])
