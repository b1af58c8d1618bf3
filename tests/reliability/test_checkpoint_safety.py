"""Every command refuses a checkpoint that is damaged, from a newer format,
for another model, or a pickle that would run code, in one line, and
nothing in such a file is ever executed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from ct_core.errors import CheckpointError
from ct_core.train.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from tests.conftest import run_cli
from tests.reliability.conftest import SMOKE, assert_ends_in_one_line_error, assert_one_line_error


class RunsCode:
    """Pickles as a call of os.system: loading it unsafely runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def malicious(path, marker):
    """A torch.save archive whose unpickling would create ``marker``."""
    torch.save({"format_version": 1, "model": RunsCode(f"touch {marker}")}, path)
    return path


def test_the_malicious_file_really_runs_code_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "pwned"
    path = malicious(tmp_path / "evil.pt", marker)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   capture_output=True, timeout=120)
    assert marker.exists()  # so the refusals below are refusals of live code


COMMANDS = {
    "ct-eval": lambda ckpt, tmp: ("ct-eval", str(ckpt)),
    "ct-sample": lambda ckpt, tmp: ("ct-sample", str(ckpt), "--tokens", "2", "--out", str(tmp / "s.txt")),
    "ct-export": lambda ckpt, tmp: ("ct-export", str(ckpt), str(tmp / "m.safetensors")),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path, command):
    marker = tmp_path / "pwned"
    path = malicious(tmp_path / "evil.pt", marker)
    name, *args = COMMANDS[command](path, tmp_path)
    proc = run_cli(name, *args, check=False)
    assert_one_line_error(proc, str(path), "safe load refuses", "nothing in it was run")
    assert not marker.exists()


def test_resume_auto_refuses_a_planted_pickle_unrun(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    marker = tmp_path / "pwned"
    last = run_dir / "checkpoints" / "last.pt"
    last.unlink()
    malicious(last, marker)
    proc = run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", "resume=auto", cwd=tmp_path, check=False)
    assert_ends_in_one_line_error(proc, "ct-train", str(last), "safe load refuses")
    assert not marker.exists()


@pytest.fixture
def payload(checkpoint):
    return torch.load(checkpoint, weights_only=True)


def test_a_newer_format_is_refused(payload, tmp_path):
    path = tmp_path / "future.pt"
    save_checkpoint(path, {**payload, "format_version": FORMAT_VERSION + 1})
    proc = run_cli("ct-eval", str(path), check=False)
    assert_one_line_error(proc, str(path), f"format {FORMAT_VERSION + 1} is newer", "upgrade")


def test_weights_of_another_model_are_refused(payload, tmp_path):
    path = tmp_path / "other.pt"
    config = {**payload["config"], "model": {**payload["config"]["model"], "d_model": 48, "n_heads": 2}}
    save_checkpoint(path, {**payload, "config": config})
    for name, *args in (COMMANDS[c](path, tmp_path) for c in ("ct-eval", "ct-sample")):
        assert_one_line_error(run_cli(name, *args, check=False), str(path), "weights do not match")


def test_resuming_with_another_config_is_refused(smoke_run, tmp_path):
    proc = run_cli("ct-train", *SMOKE, "memory.mem_len=16", f"hydra.run.dir={tmp_path / 'run'}",
                   f"resume={smoke_run / 'checkpoints' / 'last.pt'}", cwd=tmp_path, check=False)
    assert_ends_in_one_line_error(proc, "ct-train", "memory.mem_len=32", "memory.mem_len=16")


DAMAGE = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) * 2 // 3],
    "flipped bytes": lambda data: data[:-200] + bytes(200),  # the zip directory at the end is overwritten
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_files_are_refused(checkpoint, tmp_path, damage):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(DAMAGE[damage](checkpoint.read_bytes()))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(err.value).startswith(f"{bad}: not a readable checkpoint") and "\n" not in str(err.value)


@pytest.mark.parametrize("command, damage", list(zip(sorted(COMMANDS), sorted(DAMAGE))))
def test_every_command_refuses_a_damaged_file(checkpoint, tmp_path, command, damage):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(DAMAGE[damage](checkpoint.read_bytes()))
    name, *args = COMMANDS[command](bad, tmp_path)
    assert_one_line_error(run_cli(name, *args, check=False), str(bad), "not a readable checkpoint")
