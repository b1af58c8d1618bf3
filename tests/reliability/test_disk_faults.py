"""A checkpoint save that fails part-way (disk full, file too large, an I/O
error on fsync, or while pointing last.pt at the new file) removes its
temporary file, leaves every earlier checkpoint and last.pt loadable, and
stops the run with one line naming the newest complete checkpoint. The run
stops rather than retries: a full disk stays full, and the checkpoint it
names is where resume=auto continues once there is room."""

from __future__ import annotations

import errno
import os

import pytest
import torch

import ct_core.train.checkpoint as checkpoint
from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.errors import WriteError
from ct_core.train.checkpoint import load_checkpoint
from ct_core.train.trainer import Trainer
from tests.reliability.conftest import SMOKE, assert_ends_in_one_line_error, run_with_fault


def make_trainer(run_dir):
    raw = compose_recipe(["experiment=smoke/synthetic", "trainer.steps=20", "trainer.save_every=5",
                          "trainer.eval_every=100", "trainer.sample_tokens=0", "trainer.keep_last=5"], "test")
    cfg, frontend = build_run(raw)
    return Trainer(cfg, frontend, run_dir)


def failing(code: int, real, on_call: int, partial: bool = False):
    """``real`` that raises OSError(code) on its ``on_call``-th call (after
    writing half of the file first, when ``partial``)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] != on_call:
            return real(*args, **kwargs)
        if partial:
            real(*args, **kwargs)
            target = args[1]
            with open(target, "r+b") as f:
                f.truncate(os.path.getsize(target) // 2)
        raise OSError(code, os.strerror(code))

    return wrapper


FAULTS = {
    # The second step file is cut off by a full disk or the file size limit.
    "ENOSPC on write": lambda m: m.setattr(checkpoint.torch, "save",
                                           failing(errno.ENOSPC, torch.save, 2, partial=True)),
    "EFBIG on write": lambda m: m.setattr(checkpoint.torch, "save", failing(errno.EFBIG, torch.save, 2, partial=True)),
    # Each save syncs the step file, its folder, last.pt, the folder: call 5 is the second step file's.
    "EIO on fsync": lambda m: m.setattr(checkpoint.os, "fsync", failing(errno.EIO, os.fsync, 5)),
    # last.pt is a hard link where possible, else a copy: both fail.
    "ENOSPC on last.pt": lambda m: (m.setattr(checkpoint.os, "link", failing(errno.EPERM, os.link, 2)),
                                    m.setattr(checkpoint.shutil, "copyfile",
                                              failing(errno.ENOSPC, checkpoint.shutil.copyfile, 1))),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_failed_save_keeps_the_previous_checkpoint_and_stops_in_one_line(tmp_path, monkeypatch, fault):
    trainer = make_trainer(tmp_path)
    FAULTS[fault](monkeypatch)
    with pytest.raises(WriteError) as err:
        trainer.fit()
    message = str(err.value)
    failed = "last.pt (" if "last.pt" in fault else "step_00000010.pt ("  # the file whose write failed
    assert "\n" not in message and f"could not write {tmp_path / 'checkpoints' / failed}" in message, message
    assert "resume=auto" in message, message
    assert any(os.strerror(code) in message for code in (errno.ENOSPC, errno.EFBIG, errno.EIO)), message
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert load_checkpoint(folder / "last.pt", for_resume=True)["step"] == 5
    assert f"newest complete checkpoint: {folder / 'last.pt'} (step 5)" in message, message
    for path in folder.glob("step_*.pt"):
        load_checkpoint(path, for_resume=True)  # every file left is whole


def test_ct_train_reports_a_full_disk_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_with_fault("enospc-save:2", "ct-train", *SMOKE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_ends_in_one_line_error(proc, "ct-train", "No space left on device", "step_00000012.pt",
                                  f"{run_dir / 'checkpoints' / 'last.pt'} (step 6)")
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt", for_resume=True)["step"] == 6
