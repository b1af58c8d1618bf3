"""Preparation that is killed leaves nothing a later run takes as complete,
and two processes preparing the same cache at once end with one valid store
prepared once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ct_core.data.token_store import MANIFEST, TokenStore
from tests.audio.conftest import tone, write
from tests.conftest import run_cli
from tests.reliability.conftest import DRIVER, run_with_fault
from tests.text.conftest import english


def text_corpus(root):
    for i in range(8):
        (root / f"doc{i}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"doc{i}.txt").write_text(english(120, seed=i))
    return ["experiment=smoke/synthetic", "data=text_file", f"data.path={root}", "data.test_fraction=0.2"]


def audio_corpus(root):
    for i in range(8):
        write(root / f"u{i}.wav", tone(200.0 + 30 * i, 0.1, 8000, seed=i), 8000)
    return ["experiment=audio/demo", "data.corpus=folder", f"data.root={root}", "data.valid_fraction=0.2",
            "data.test_fraction=0.2"]


CORPORA = {"text": text_corpus, "audio": audio_corpus}


def stores(cache):
    """Stores a run would take as complete: a manifest in a store's own
    folder (a writer's hidden temporary folder does not count)."""
    return sorted(p.parent for p in cache.glob(f"*/*/{MANIFEST}") if not p.parent.name.startswith("."))


@pytest.mark.parametrize("fault", ["kill-prepare:3", "kill-install:1"])
@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_a_killed_preparation_leaves_no_store_and_the_next_one_is_whole(tmp_path, corpus, fault):
    recipe = CORPORA[corpus](tmp_path / "corpus") + [f"data.cache_dir={tmp_path / 'cache'}"]
    killed = run_with_fault(fault, "ct-prepare", *recipe, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert stores(tmp_path / "cache") == []

    again = run_cli("ct-prepare", *recipe, cwd=tmp_path)
    (store,) = stores(tmp_path / "cache")
    assert [p.name for p in store.parent.iterdir() if p.name.startswith(".") and p.is_dir()] == []  # swept
    fresh = recipe[:-1] + [f"data.cache_dir={tmp_path / 'fresh'}"]
    reference = run_cli("ct-prepare", *fresh, cwd=tmp_path)
    # The same counts and the same store, each under its own cache folder (the last line names it).
    assert again.stdout.replace(str(tmp_path / 'cache'), 'CACHE') == reference.stdout.replace(str(tmp_path / 'fresh'), 'CACHE')
    (clean,) = stores(tmp_path / "fresh")
    for split in ("train", "valid", "test"):
        a, b = TokenStore(store).documents(split), TokenStore(clean).documents(split)
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_two_processes_preparing_at_once_make_one_store_once(tmp_path):
    recipe = text_corpus(tmp_path / "corpus") + [f"data.cache_dir={tmp_path / 'cache'}"]
    log = tmp_path / "writers.log"
    env = {"CT_FAULT_LOG": str(log)}
    full_env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join(
        filter(None, [str(DRIVER.parents[2]), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, str(DRIVER), "slow-prepare:3", "ct-prepare", *recipe]
    first = subprocess.Popen(command, cwd=tmp_path, env=full_env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not log.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    # The first process is writing its store (slowly): the second starts now.
    second = subprocess.run(command, cwd=tmp_path, env=full_env, text=True, capture_output=True, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    assert out == second.stdout  # the same documents and tokens
    assert len(log.read_text().split()) == 1, "the data was prepared twice"
    (store,) = stores(tmp_path / "cache")
    assert [p.name for p in store.parent.iterdir() if p.name.startswith(".") and p.is_dir()] == []
