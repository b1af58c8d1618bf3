"""Checkpoints: atomic writes, weights_only loading, RNG restore, rotation, export."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ct_core.train.checkpoint as checkpoint
from ct_core.train.checkpoint import (
    FORMAT_VERSION,
    CheckpointManager,
    capture_rng_state,
    export_safetensors,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ct_core.errors import CheckpointError


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.proj = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, 11, bias=False)
        self.out.weight = self.embed.weight  # tied: one storage, two names


def make_payload(step: int = 3) -> dict:
    torch.manual_seed(step)
    model = Tied()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model.proj(model.embed(torch.tensor([1, 2]))).sum().backward()
    optimizer.step()
    scheduler.step()
    return {
        "format_version": FORMAT_VERSION,
        "package_version": checkpoint.package_version(),
        "config": {"model": {"d_model": 6, "vocab_size": 11}, "trainer": {"lr": 1e-3, "steps": [1, 2]}},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "tokens_seen": 1234 * step,
        "batcher": {"mode": "train", "epoch": [0, 1], "piece": [2, 0], "offset": [16, 0], "shuffle": True},
        "memory": {"mem": torch.randn(2, 4, 6), "mem_valid": torch.ones(2, 4, dtype=torch.bool)},
        "rng": capture_rng_state(),
        "frontend": {},
    }


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    payload = make_payload()
    path = tmp_path / "ck" / "a.pt"
    save_checkpoint(path, payload)
    assert_same(load_checkpoint(path, for_resume=True), payload)
    assert_same(torch.load(path, weights_only=True), payload)
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]  # no temporary file left


def test_rng_restore_reproduces_every_generator(tmp_path: Path) -> None:
    random.gauss(0, 1)  # leaves a cached second gaussian in Python's state
    np.random.randn()  # and in numpy's
    save_checkpoint(tmp_path / "r.pt", make_payload() | {"rng": capture_rng_state()})

    def draw():
        return torch.rand(5), np.random.randn(5), [random.random() for _ in range(3)], random.gauss(0, 1)

    first = draw()
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    second = draw()
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2:] == second[2:]


def test_failed_save_leaves_previous_checkpoint_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_payload(step=1))

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_payload(step=2))
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_process_killed_mid_save_leaves_previous_checkpoint(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        import ct_core.train.checkpoint as ck
        path = {str(tmp_path / "step_00000001.pt")!r}
        ck.save_checkpoint(path, {{"step": 1, "w": torch.ones(1000)}})
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            with open(f, "r+b") as fh:  # as if the process died halfway through writing
                fh.truncate(os.path.getsize(f) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        ck.torch.save = dying_save
        ck.save_checkpoint(path, {{"step": 2, "w": torch.zeros(1000)}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert torch.load(tmp_path / "step_00000001.pt", weights_only=True)["step"] == 1
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(stale) == 1  # the killed save's temporary file...
    CheckpointManager(tmp_path)
    assert not stale[0].exists()  # ...is swept by the next run's manager


def test_damaged_or_foreign_files_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=f"{missing}: no such checkpoint"):
        load_checkpoint(missing)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)

    good = tmp_path / "good.pt"
    save_checkpoint(good, make_payload())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(300))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": Path("x")}, foreign)  # not loadable with weights_only
    listing = tmp_path / "list.pt"
    torch.save([1, 2], listing)
    for path in (truncated, garbage, foreign, listing):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)

    partial = tmp_path / "partial.pt"
    save_checkpoint(partial, {k: v for k, v in make_payload().items() if k not in ("model", "rng")})
    with pytest.raises(CheckpointError, match="lacks model"):
        load_checkpoint(partial)
    weights_only = tmp_path / "weights.pt"
    save_checkpoint(weights_only, {k: v for k, v in make_payload().items() if k != "optimizer"})
    assert load_checkpoint(weights_only)["step"] == 3
    with pytest.raises(CheckpointError, match="lacks optimizer"):
        load_checkpoint(weights_only, for_resume=True)


def test_manager_keeps_last_n_and_finds_latest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    assert manager.latest() is None
    for step in (10, 20, 30, 40):
        manager.save(step, make_payload(step))
    assert [s for s, _ in manager.step_files()] == [30, 40]
    assert load_checkpoint(manager.last_path)["step"] == 40
    assert manager.latest() == manager.last_path
    names = sorted(p.name for p in manager.dir.iterdir())
    assert names == ["last.pt", "step_00000030.pt", "step_00000040.pt"]

    # a damaged last.pt falls back to the newest complete step file
    manager.last_path.unlink()  # break the hard link before damaging the file
    manager.last_path.write_bytes(b"not a zip")
    assert manager.latest() == manager.step_path(40)
    manager.step_path(40).write_bytes(manager.step_path(40).read_bytes()[:100])
    assert manager.latest() == manager.step_path(30)
    manager.step_path(30).unlink()
    assert manager.latest() is None


def test_manager_keep_zero_keeps_only_last(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=0)
    manager.save(1, make_payload(1))
    manager.save(2, make_payload(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(manager.latest())["step"] == 2


def test_export_safetensors_round_trip(tmp_path: Path) -> None:
    payload = make_payload()
    save_checkpoint(tmp_path / "c.pt", payload)
    out = export_safetensors(tmp_path / "c.pt", tmp_path / "model.safetensors")
    loaded = load_file(out)
    assert loaded.keys() == payload["model"].keys()
    for name, tensor in payload["model"].items():
        assert torch.equal(loaded[name], tensor)
    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["config"]) == payload["config"]
    assert metadata["step"] == "3"
