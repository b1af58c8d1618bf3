"""What the reliability tests share: a small trained checkpoint, the
one-line-error assertion, and a way to make a folder unwritable that also
holds when the tests run as root."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from ct_core.train.run_lock import LOCK_FILE
from tests.conftest import run_cli

#: The audio demo's front end (8 kHz μ-law) with a tiny model.
AUDIO = ["experiment=audio/demo", "model=tiny", "memory=ct_small"]
#: A few seconds of training: enough for a checkpoint every command can read.
SMOKE = ["experiment=smoke/synthetic", "trainer.steps=12", "trainer.save_every=6", "trainer.eval_every=6",
         "trainer.log_every=3", "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0"]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A finished 12-step smoke run (its directory); tests must not modify it."""
    run_dir = tmp_path_factory.mktemp("reliability_smoke") / "run"
    run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir


@pytest.fixture
def checkpoint(smoke_run, tmp_path) -> Path:
    """A private copy of the smoke run's checkpoint, inside its own run layout."""
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    shutil.copyfile(smoke_run / "checkpoints" / "last.pt", path)
    return path


def untrained_checkpoint(path: Path, overrides: list[str], scale: float = 1.0) -> Path:
    """A checkpoint of an untrained model of the recipe ``overrides`` (output
    weights times ``scale``), written without reading any data."""
    import torch

    from ct_core.cli.common import compose_recipe
    from ct_core.cli.run_setup import build_run
    from ct_core.model.lm import CompressiveTransformerLM
    from ct_core.train.checkpoint import FORMAT_VERSION, package_version, save_checkpoint

    cfg, frontend = build_run(compose_recipe(overrides, "test"))
    torch.manual_seed(0)
    model = CompressiveTransformerLM(cfg.model)
    with torch.no_grad():
        model.head.weight.mul_(scale)
    save_checkpoint(path, {"format_version": FORMAT_VERSION, "package_version": package_version(),
                           "config": cfg.raw, "model": model.state_dict(), "step": 0,
                           "frontend": frontend.state_dict()})
    return path


def assert_one_line_error(proc, *needles: str, code: int = 2) -> str:
    """``proc`` failed with exit ``code`` and one line on stderr holding every needle."""
    err = proc.stderr.strip()
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def assert_ends_in_one_line_error(proc, prog: str, *needles: str) -> str:
    """Like :func:`assert_one_line_error` for a command that logged progress
    first (ct-train): exit 2, no traceback, the last line is the error."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{err}"
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"{prog}: error: "), err
    for needle in needles:
        assert needle in last, last
    return last


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply. Root ignores them,
    so as root the command runs without the capability that overrides them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a folder unwritable")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def read_only(folder: Path) -> Path:
    """``folder`` (created) with write permission removed; pair with :func:`unprivileged`."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return folder


def run_unprivileged(name: str, *args: str, **kwargs):
    """:func:`tests.conftest.run_cli` under :func:`unprivileged`."""
    from tests.conftest import script
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = unprivileged() + script(name) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kwargs.get("timeout", 600),
                          cwd=kwargs.get("cwd"), env=env)


DRIVER = Path(__file__).with_name("fault_driver.py")


def run_with_fault(fault: str, prog: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """``prog`` (ct-train or ct-prepare) with ``fault`` injected (see fault_driver.py)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(DRIVER), fault, prog, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def rows(run_dir):
    """metrics.jsonl without the fields that depend on the clock."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("time")
        record.pop("tokens_per_s", None)
        out.append(record)
    return out


def run_files(run_dir: Path) -> dict[Path, bytes]:
    """Every file of a run directory but the lock (which records the last pid that took it)."""
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_FILE}
