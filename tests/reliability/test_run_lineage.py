"""A run directory holds one lineage: another run's checkpoint is not
resumed into a directory that holds a run (unless trainer.overwrite=true),
its own checkpoints are, and checkpoints written before run ids existed
still resume where they lie."""

from __future__ import annotations

import json
import shutil

import torch

from ct_core.train.run_lineage import RUN_FILE, RUN_ID_KEY
from tests.conftest import run_cli
from tests.reliability.conftest import SMOKE, assert_one_line_error, rows, run_files



def run_id(run_dir):
    return json.loads((run_dir / RUN_FILE).read_text())[RUN_ID_KEY]


def checkpoint_ids(run_dir):
    """``{file name: run id}`` of every checkpoint in the run."""
    return {p.name: torch.load(p, weights_only=True, mmap=True).get(RUN_ID_KEY)
            for p in sorted((run_dir / "checkpoints").glob("*.pt"))}


def other_run(tmp_path):
    """A second 6-step run of the same recipe in its own directory: another
    run, although its weights equal the smoke run's at step 6."""
    run_dir = tmp_path / "other"
    run_cli("ct-train", *SMOKE, "trainer.steps=6", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    return run_dir


def test_another_runs_checkpoint_is_not_resumed_into_a_run_and_nothing_changes(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    foreign = other_run(tmp_path) / "checkpoints" / "last.pt"
    before = run_files(run_dir)
    proc = run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", f"resume={foreign}", cwd=tmp_path, check=False)
    assert_one_line_error(proc, f"resume={foreign} is a checkpoint of another run", f"{run_dir} already holds a run",
                          "trainer.overwrite=true", "hydra.run.dir=")
    # last.pt, the step files, metrics.jsonl, .hydra/ and run.json byte for byte as they were.
    assert run_files(run_dir) == before


def test_overwrite_replaces_the_run_with_the_resumed_lineage(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    other = other_run(tmp_path)
    foreign = other / "checkpoints" / "last.pt"
    run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", f"resume={foreign}", "trainer.overwrite=true",
            cwd=tmp_path)
    new_id = run_id(run_dir)
    assert new_id not in (run_id(smoke_run), run_id(other))
    record = json.loads((run_dir / RUN_FILE).read_text())
    assert record["branched_from"] == {"checkpoint": str(foreign.resolve()), "step": 6, RUN_ID_KEY: run_id(other)}
    # Only the resumed lineage: step files after step 6, rows after step 6, every checkpoint of the new run.
    assert checkpoint_ids(run_dir) == {"last.pt": new_id, "step_00000012.pt": new_id}
    assert min(r["step"] for r in rows(run_dir)) > 6


def test_a_run_keeps_its_id_when_resumed_copied_or_branched(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)  # a copied run is the same run
    own = run_id(run_dir)
    assert set(checkpoint_ids(run_dir).values()) == {own}
    run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", f"resume={run_dir / 'checkpoints' / 'step_00000006.pt'}",
            cwd=tmp_path)
    assert run_id(run_dir) == own and set(checkpoint_ids(run_dir).values()) == {own}
    run_cli("ct-train", *SMOKE, "trainer.steps=18", f"hydra.run.dir={run_dir}", "resume=auto", cwd=tmp_path)
    assert run_id(run_dir) == own and checkpoint_ids(run_dir)["step_00000018.pt"] == own
    # Into a fresh directory, another run's checkpoint starts a branch: a new run that names its origin.
    branch = tmp_path / "branch"
    run_cli("ct-train", *SMOKE, "trainer.steps=18", f"hydra.run.dir={branch}",
            f"resume={smoke_run / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    record = json.loads((branch / RUN_FILE).read_text())
    assert record[RUN_ID_KEY] != own and record["branched_from"][RUN_ID_KEY] == own
    assert set(checkpoint_ids(branch).values()) == {record[RUN_ID_KEY]}


def strip_run_ids(run_dir):
    """Make ``run_dir`` look written before run ids existed."""
    (run_dir / RUN_FILE).unlink()
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        payload = torch.load(path, weights_only=True)
        del payload[RUN_ID_KEY]
        torch.save(payload, path)
    last = run_dir / "checkpoints" / "last.pt"
    last.unlink()
    shutil.copyfile(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1], last)


def test_checkpoints_without_a_run_id_resume_where_they_lie_and_nowhere_else(smoke_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(smoke_run, old)
    strip_run_ids(old)
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    before = run_files(run_dir)
    foreign = old / "checkpoints" / "step_00000006.pt"
    proc = run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", f"resume={foreign}", cwd=tmp_path, check=False)
    assert_one_line_error(proc, f"resume={foreign} is a checkpoint of another run")
    assert run_files(run_dir) == before
    # In its own directory the old checkpoint resumes; the run adopts a new id from then on.
    whole = rows(old)
    run_cli("ct-train", *SMOKE, f"hydra.run.dir={old}", f"resume={foreign}", cwd=tmp_path)
    assert rows(old) == whole
    adopted = run_id(old)
    assert checkpoint_ids(old)["step_00000012.pt"] == adopted
    # A checkpoint of the new id into the old-style directory's run is its own as well.
    run_cli("ct-train", *SMOKE, "trainer.steps=18", f"hydra.run.dir={old}", "resume=auto", cwd=tmp_path)
    assert run_id(old) == adopted
