"""Long runs do not grow: resident memory after 2,000 training steps, and
after 50 segments of sampling, stays within a small bound of its value
early on (tiny model, CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.model.sampling import generate
from ct_core.train.trainer import Trainer

STATM = Path("/proc/self/statm")
#: Growth allowed between the early and the late measurement.
BOUND_MIB = 16.0
TINY = ["experiment=smoke/synthetic", "model.n_layers=1", "model.d_model=16", "model.n_heads=2", "model.d_ff=32",
        "memory.seq_len=8", "memory.mem_len=8", "memory.cmem_len=4", "trainer.batch_size=2", "eval.batch_size=2",
        "trainer.log_every=100", "trainer.eval_every=500", "trainer.eval_max_batches=2", "trainer.save_every=500",
        "trainer.keep_last=1", "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0", "trainer.threads=1"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not STATM.exists(), reason="resident memory is read from /proc (Linux)")]


def rss_mib() -> float:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_training_memory_is_flat_over_2000_steps(tmp_path):
    cfg, frontend = build_run(compose_recipe([*TINY, "trainer.steps=2000"], "test"))
    trainer = Trainer(cfg, frontend, tmp_path)
    seen: dict[int, float] = {}
    step = trainer.train_step

    def measured():
        stats = step()
        if trainer.step in (200, 2000):
            seen[trainer.step] = rss_mib()
        return stats

    trainer.train_step = measured
    trainer.fit()
    growth = seen[2000] - seen[200]
    print(f"training RSS: {seen[200]:.1f} MiB at step 200, {seen[2000]:.1f} MiB at step 2000")
    assert growth < BOUND_MIB, f"RSS grew by {growth:.1f} MiB from step 200 to 2000"


def test_sampling_memory_is_flat_over_50_segments():
    cfg, _ = build_run(compose_recipe(TINY, "test"))
    from ct_core.model.lm import CompressiveTransformerLM

    torch.manual_seed(0)
    model = CompressiveTransformerLM(cfg.model)
    seq = cfg.model.seq_len
    seen: dict[int, float] = {}
    count = {"n": 0}

    def measure(column):
        count["n"] += 1
        if count["n"] in (5 * seq, 50 * seq):
            seen[count["n"] // seq] = rss_mib()

    generate(model, torch.zeros(2, 1, dtype=torch.long), 50 * seq, generator=torch.Generator().manual_seed(0),
             callback=measure)
    growth = seen[50] - seen[5]
    print(f"sampling RSS: {seen[5]:.1f} MiB after 5 segments, {seen[50]:.1f} MiB after 50")
    assert growth < BOUND_MIB, f"RSS grew by {growth:.1f} MiB from segment 5 to 50"
