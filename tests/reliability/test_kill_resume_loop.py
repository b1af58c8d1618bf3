"""Ten SIGKILLs at points drawn by a seeded generator (mid-step, halfway
through a checkpoint file, between a step file and last.pt, during an
evaluation pass, during data preparation), each followed by
``resume=auto``: the run ends bit-identical to one never interrupted
(weights, optimizer, scheduler, batcher, memories, RNG states, step,
tokens) and with the same metrics.jsonl rows."""

from __future__ import annotations

import random
import shutil
import signal

import pytest
import torch

from tests.core.train.test_resume import assert_same
from tests.reliability.conftest import rows, run_with_fault
from tests.text.conftest import english

pytestmark = pytest.mark.slow

STEPS = 48
KILLS = 10
SEED = 14
#: Kill points and the event counts they are drawn from. Every point stops
#: a process at most 4 steps past its last checkpoint (save_every=4), so
#: ten kills cannot finish the 48 steps: every kill happens.
POINTS = {"kill-step": range(1, 7), "kill-save": range(1, 3), "kill-link": range(1, 3), "kill-eval": range(1, 2),
          "kill-prepare": range(1, 3)}


def recipe(corpus, cache, run_dir):
    return ["experiment=smoke/synthetic", "data=text_file", f"data.path={corpus}", f"data.cache_dir={cache}",
            "model.dropout=0.1", f"trainer.steps={STEPS}", "trainer.save_every=4", "trainer.eval_every=8",
            "trainer.eval_max_batches=3", "trainer.log_every=2", "trainer.grad_accum=2", "trainer.keep_last=3",
            "trainer.deterministic=true", "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0",
            f"hydra.run.dir={run_dir}"]


def schedule() -> list[str]:
    """Ten faults: each kind at least once, the rest drawn, in a seeded order."""
    rng = random.Random(SEED)
    kinds = list(POINTS) + rng.choices(sorted(POINTS), k=KILLS - len(POINTS))
    rng.shuffle(kinds)
    return [f"{kind}:{rng.choice(POINTS[kind])}" for kind in kinds]


def test_ten_kills_and_resumes_end_bit_identical(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(english(1500, seed=3))
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    cache = tmp_path / "cache"
    reference = run_with_fault("none", "ct-train", *recipe(corpus, tmp_path / "cache_whole", whole), cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    for fault in schedule():
        if fault.startswith("kill-prepare"):
            shutil.rmtree(cache / "text", ignore_errors=True)  # so that this run prepares the data
        proc = run_with_fault(fault, "ct-train", *recipe(corpus, cache, broken), "resume=auto", cwd=tmp_path)
        assert proc.returncode == -signal.SIGKILL, f"{fault}: {proc.stderr}"
    final = run_with_fault("none", "ct-train", *recipe(corpus, cache, broken), "resume=auto", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert "resumed from" in final.stderr

    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(broken / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == STEPS and a["tokens_seen"] == b["tokens_seen"]
    for key in ("model", "optimizer", "scheduler", "batcher", "memory", "rng"):
        assert_same(a[key], b[key], key)
    assert rows(broken) == rows(whole)
