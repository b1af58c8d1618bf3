"""Under torchrun a training step waits for nothing but its own work: the
stop check adds no blocking collective (the ranks exchange their stop flags
in the background, on a gloo group of their own), and a SIGTERM to one rank
still stops every rank at the same step with a saved checkpoint and the
command that continues the run. The process group joins on the rank's own
GPU first (checked with the calls recorded, as a CPU has no GPU)."""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ct_core.train.distributed import init_distributed
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow  # torchrun as a subprocess

SMOKE = ["experiment=smoke/synthetic", "trainer.batch_size=4", "compression=mean_pool", "trainer.threads=1",
         "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0"]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
            *args]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))


def test_a_step_issues_no_blocking_collective_for_the_stop_check(tmp_path):
    out = tmp_path / "counts.json"
    proc = subprocess.run(torchrun(str(REPO / "tests/core/train/ddp_sync_driver.py"), str(out), "trainer.steps=7",
                                   "trainer.log_every=3", "trainer.eval_every=100", "trainer.save_every=100",
                                   "trainer.final_eval=false", "trainer.eval_max_batches=1"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        iterations = json.loads(Path(f"{out}.{rank}").read_text())
        assert len(iterations) == 8  # start-up, then steps 1..7
        # Start-up: the first stop exchange, in the background.
        assert iterations[0] == [["side", False]]
        # Every step, logging steps (3, 6) included: the loss totals (the one
        # blocking all-reduce of a CPU step), then the next step's stop check,
        # which only sends its flag.
        for step in range(1, 7):
            assert iterations[step] == [["default", True], ["side", False]], (rank, step, iterations[step])


def worker_pids(parent: int) -> dict[int, int]:
    """rank -> pid of the torchrun workers started by ``parent``."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) != parent:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                ranks[int(item[5:])] = int(stat.parent.name)
    return ranks


def test_sigterm_to_one_rank_stops_both_with_a_checkpoint_and_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(torchrun("-m", "ct_core.cli.train", *SMOKE, "trainer.steps=100000",
                                     "trainer.save_every=100000", "trainer.eval_every=100000", "trainer.log_every=1",
                                     f"hydra.run.dir={run_dir}"),
                            cwd=tmp_path, env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    metrics = run_dir / "metrics.jsonl"
    while proc.poll() is None and time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    ranks = worker_pids(proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] >= 3 and len(saved["ranks"]) == 2
    last = run_dir / "checkpoints" / "last.pt"
    # Both ranks stopped at the step saved and said so, rank 0 having been told by rank 1.
    assert err.count(f"ct-train: SIGTERM at step {saved['step']}; saved {last}") == 2, err[-4000:]
    assert "Traceback (most recent call last)" not in err.split("ct-train: SIGTERM", 1)[0], err[-4000:]
    # Both ranks print it; their lines may interleave, each write is whole.
    command = re.search(r"continue with: (ct-train .*?resume=auto)", err).group(1)
    argv = shlex.split(command)
    assert argv[0] == "ct-train" and "resume=auto" in argv and f"hydra.run.dir={run_dir}" in argv, command
    resumed = run_cli(*argv, f"trainer.steps={saved['step'] + 1}", cwd=tmp_path)
    assert f"resumed from {last}" in resumed.stderr or "memories restart empty" in resumed.stderr, resumed.stderr
    assert torch.load(last, weights_only=True)["step"] == saved["step"] + 1


def test_nccl_joins_on_the_ranks_own_gpu_first():
    calls = []
    ctx = init_distributed("cuda", env={"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"},
                           set_device=lambda index: calls.append(("set_device", index)),
                           init_process_group=lambda **kw: calls.append(("init_process_group", kw)))
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (3, 4, 1)
    assert calls == [("set_device", 1), ("init_process_group", {"backend": "nccl",
                                                                "device_id": torch.device("cuda", 1)})]
    calls.clear()
    init_distributed("cpu", env={"WORLD_SIZE": "2", "RANK": "0"}, set_device=lambda index: calls.append(index),
                     init_process_group=lambda **kw: calls.append(kw))
    assert calls == [{"backend": "gloo"}]
