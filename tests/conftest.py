"""Suite-wide fixtures: prepared data goes to a temporary cache, never to
the user's home, and console scripts are found beside the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ct_cache")
    old = os.environ.get("CT_CACHE_DIR")
    os.environ["CT_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CT_CACHE_DIR", None)
    else:
        os.environ["CT_CACHE_DIR"] = old


def script(name: str) -> list[str]:
    """The installed console script ``name`` (or its module, when run from a
    checkout whose scripts are not on disk)."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    module = {"ct-train": "train", "ct-eval": "evaluate", "ct-sample": "sample", "ct-prepare": "prepare",
              "ct-export": "export"}[name]
    return [sys.executable, "-m", f"ct_core.cli.{module}"]


def run_cli(name: str, *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600):
    """Run a console script; returns the CompletedProcess (text mode)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run(script(name) + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
