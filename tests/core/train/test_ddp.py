"""Two gloo processes under torchrun train the same weights as one process
with the same global batch (lanes split across ranks, losses normalised over
the global batch)."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # torchrun and the console scripts as subprocesses

RECIPE = ["experiment=smoke/synthetic", "trainer.steps=8", "trainer.batch_size=4", "trainer.save_every=8",
          "trainer.eval_every=8", "trainer.sample_tokens=0", "compression=mean_pool", "trainer.threads=1"]


def test_two_process_gloo_matches_single_process(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    run_cli("ct-train", *RECIPE, f"hydra.run.dir={single}", cwd=tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "ct_core.cli.train", *RECIPE, f"hydra.run.dir={double}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a = torch.load(single / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(double / "checkpoints" / "last.pt", weights_only=True)
    assert a["tokens_seen"] == b["tokens_seen"] and b["step"] == 8
    assert len(b["ranks"]) == 2
    for name, value in a["model"].items():
        assert torch.allclose(value, b["model"][name], atol=1e-5, rtol=1e-4), name
