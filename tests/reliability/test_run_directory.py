"""A run directory belongs to one run: ct-train does not train over an
earlier run unless asked (resume=auto, trainer.overwrite=true), a resumed run
forgets the metrics past its checkpoint, a live run's directory is locked,
and an unusable hydra.run.dir is one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from tests.conftest import run_cli, script
from tests.reliability.conftest import SMOKE, assert_one_line_error, read_only, rows, run_unprivileged, run_files



def test_training_again_without_resume_is_refused_and_changes_nothing(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    before = run_files(run_dir)
    proc = run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert_one_line_error(proc, str(run_dir), "resume=auto", "hydra.run.dir", "trainer.overwrite=true")
    assert run_files(run_dir) == before  # last.pt, metrics.jsonl and .hydra/ untouched


def test_overwrite_replaces_the_earlier_run(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    run_cli("ct-train", *SMOKE, "trainer.steps=6", "trainer.overwrite=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    steps = [r["step"] for r in rows(run_dir)]
    assert steps == sorted(steps) and max(steps) == 6  # only the new run's rows
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "step_00000006.pt"]


def test_resume_forgets_metrics_past_the_checkpoint(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    whole = rows(run_dir)
    run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}",
            f"resume={run_dir / 'checkpoints' / 'step_00000006.pt'}", cwd=tmp_path)
    assert rows(run_dir) == whole  # steps 7..12 logged once, as in the uninterrupted run


def test_hydra_run_dir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "plain").write_text("x")
    proc = run_cli("ct-train", *SMOKE, f"hydra.run.dir={tmp_path / 'plain' / 'run'}", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "hydra.run.dir=", "plain", "not a folder")


def test_read_only_hydra_run_dir_is_one_line(tmp_path):
    folder = read_only(tmp_path / "ro")
    proc = run_unprivileged("ct-train", *SMOKE, f"hydra.run.dir={folder / 'run'}", cwd=tmp_path)
    assert_one_line_error(proc, "hydra.run.dir=", "ermission denied")


def test_a_live_run_locks_its_directory_and_a_killed_one_does_not(tmp_path):
    run_dir = tmp_path / "run"
    live = subprocess.Popen(script("ct-train") + SMOKE + ["trainer.steps=100000", "trainer.save_every=100000",
                                                          f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.jsonl").is_file() and live.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert live.poll() is None, "the first run ended early"
        second = run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", "resume=auto", cwd=tmp_path, check=False)
        assert_one_line_error(second, str(run_dir), f"pid {live.pid}")
    finally:
        os.kill(live.pid, signal.SIGKILL)
        live.wait()
    # The killed run saved nothing: resume=auto starts afresh and keeps none of its rows.
    third = run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", "resume=auto", cwd=tmp_path)
    assert "starting fresh" in third.stderr
    steps = [(r["step"], r["split"]) for r in rows(run_dir)]
    assert len(steps) == len(set(steps)) and max(s for s, _ in steps) == 12
