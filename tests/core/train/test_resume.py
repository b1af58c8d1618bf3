"""Exact resume: a run SIGKILLed and resumed with resume=auto ends with
weights, optimizer, scheduler, batcher, memories and RNG states bit-identical
to a run that was never interrupted (CPU)."""

import os
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import run_cli, script

pytestmark = pytest.mark.slow  # runs the console scripts as subprocesses

# Dropout and shuffling make the RNG and batcher state matter.
RECIPE = ["experiment=smoke/synthetic", "trainer.steps=40", "trainer.save_every=10", "trainer.eval_every=20",
          "trainer.log_every=5", "model.dropout=0.1", "trainer.sample_tokens=0", "trainer.grad_accum=2",
          "trainer.keep_last=5"]


def final_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def assert_same(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_sigkill_then_resume_auto_is_bit_identical(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_cli("ct-train", *RECIPE, f"hydra.run.dir={whole}", cwd=tmp_path)

    proc = subprocess.Popen(script("ct-train") + RECIPE + [f"hydra.run.dir={broken}", "trainer.steps=40"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = broken / "checkpoints" / "step_00000020.pt"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists()
    assert not (broken / "checkpoints" / "step_00000040.pt").exists(), "the run finished before it was killed"

    resumed = run_cli("ct-train", *RECIPE, f"hydra.run.dir={broken}", "resume=auto", cwd=tmp_path)
    assert "resumed from" in resumed.stderr + resumed.stdout
    a, b = final_state(whole), final_state(broken)
    assert a["step"] == b["step"] == 40 and a["tokens_seen"] == b["tokens_seen"]
    for key in ("model", "optimizer", "scheduler", "batcher", "memory", "rng"):
        assert_same(a[key], b[key], key)
