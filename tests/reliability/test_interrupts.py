"""Ctrl-C (SIGINT) or SIGTERM during ct-train finishes the step, saves a
checkpoint and prints the command that continues the run; during ct-sample
it writes what was sampled and says how much."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import run_cli, script
from tests.reliability.conftest import SMOKE


def _ctrl_c_as_in_a_terminal() -> None:
    # A test run started in the background (``pytest &``) ignores SIGINT, and
    # so would its children: Python then never turns Ctrl-C into
    # KeyboardInterrupt. The commands are tested as a terminal starts them.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(name: str, *args: str, cwd) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(script(name) + list(args), cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_ctrl_c_as_in_a_terminal)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_saves_on_a_signal_and_says_how_to_continue(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = start("ct-train", *SMOKE, "trainer.steps=100000", "trainer.save_every=100000", "trainer.log_every=1",
                 f"hydra.run.dir={run_dir}", cwd=tmp_path)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out + err
    assert "Traceback" not in err, err
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] >= 3
    assert f"saved {run_dir / 'checkpoints' / 'last.pt'}" in err and f"at step {saved['step']}" in err, err
    command = next(line for line in err.splitlines() if "continue with:" in line).split("continue with:", 1)[1]
    argv = shlex.split(command)
    assert argv[0] == "ct-train" and "resume=auto" in argv and f"hydra.run.dir={run_dir}" in argv, command
    resumed = run_cli(*argv, f"trainer.steps={saved['step'] + 2}", cwd=tmp_path)
    assert f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at step {saved['step']}" in resumed.stderr


def test_sample_writes_what_it_has_on_ctrl_c(checkpoint, tmp_path):
    out = tmp_path / "long.txt"
    # Eager: a million tokens would compile the step first, and the
    # interrupt is checked between tokens either way.
    proc = start("ct-sample", str(checkpoint), "--prompt", "1 2 3", "--tokens", "1000000", "--compile", "off",
                 "--out", str(out), cwd=tmp_path)
    streamed = ""
    while len(streamed.split()) < 3 + 8 and proc.poll() is None:
        streamed += proc.stdout.read(1)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    ids = out.read_text().split()
    assert ids[:3] == ["1", "2", "3"] and len(ids) >= 3 + 8
    assert f"interrupted: wrote {len(ids) - 3:,} of 1,000,000 tokens per stream (partial) to {out}" in err, err
