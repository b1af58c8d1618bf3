"""Runs ct-train or ct-prepare with one fault injected at a precise point,
for the tests that check what survives it. Not a test itself.

    python tests/reliability/fault_driver.py FAULT PROG [overrides ...]

FAULT is ``none`` or ``KIND:N`` (the N-th event of that kind in this
process, counted from 1):

=================  ===========================================================
``kill-step:N``    SIGKILL right after the N-th optimizer step (never saved)
``kill-save:N``    SIGKILL halfway through writing the N-th checkpoint file
``kill-link:N``    SIGKILL after the N-th step file is in place, before last.pt
``kill-eval:N``    SIGKILL after two batches of the N-th evaluation pass
``kill-prepare:N`` SIGKILL after the N-th document written to a token store
``kill-install:N`` SIGKILL when the N-th finished token store is about to be moved into place
``enospc-save:N``  the N-th checkpoint write fails: no space left on device
``slow-prepare:N`` every document written to a token store takes N/10 s
=================  ===========================================================

Every token store writer started appends its pid to ``$CT_FAULT_LOG``
(when set), so a test can count how many processes prepared data.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _nth(n: int, action):
    """A counter that runs ``action`` on its n-th call."""
    calls = {"n": 0}

    def tick() -> bool:
        calls["n"] += 1
        if calls["n"] == n:
            action()
            return True
        return False

    return tick


def install(fault: str) -> None:
    import torch

    import ct_core.train.checkpoint as checkpoint
    import ct_core.train.trainer as trainer_module
    from ct_core.data.token_store import TokenStoreWriter

    log = os.environ.get("CT_FAULT_LOG")
    writer_init = TokenStoreWriter.__init__

    def logged_init(self, *args, **kwargs):
        writer_init(self, *args, **kwargs)
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")

    TokenStoreWriter.__init__ = logged_init
    if fault == "none":
        return
    kind, _, count = fault.partition(":")
    n = int(count)

    if kind == "kill-step":
        tick = _nth(n, _die)
        step = trainer_module.Trainer.train_step

        def train_step(self):
            stats = step(self)
            tick()
            return stats

        trainer_module.Trainer.train_step = train_step
    elif kind in ("kill-save", "enospc-save"):
        real_save = torch.save
        calls = {"n": 0}

        def save(obj, f, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] != n:
                return real_save(obj, f, *args, **kwargs)
            real_save(obj, f, *args, **kwargs)
            with open(f, "r+b") as fh:  # the process stops halfway through the file
                fh.truncate(os.path.getsize(f) // 2)
            if kind == "kill-save":
                _die()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

        checkpoint.torch.save = save
    elif kind == "kill-link":
        tick = _nth(n, _die)
        real_link = os.link

        def link(src, dst, *args, **kwargs):
            tick()
            return real_link(src, dst, *args, **kwargs)

        checkpoint.os.link = link
    elif kind == "kill-eval":
        real_evaluate = trainer_module.evaluate
        passes = {"n": 0}

        def evaluate(model, *args, **kwargs):
            passes["n"] += 1
            if passes["n"] == n:
                forward = model.forward
                batches = _nth(3, _die)

                def dying_forward(*a, **k):
                    batches()
                    return forward(*a, **k)

                model.forward = dying_forward
            return real_evaluate(model, *args, **kwargs)

        trainer_module.evaluate = evaluate
    elif kind == "kill-install":
        import ct_core.data.token_store as token_store

        tick = _nth(n, _die)
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(src).is_dir():
                tick()
            return real_replace(src, dst, *args, **kwargs)

        token_store.os.replace = replace
    elif kind in ("kill-prepare", "slow-prepare"):
        tick = _nth(n, _die)
        add = TokenStoreWriter.add

        def slow_or_dying_add(self, split, tokens):
            add(self, split, tokens)
            if kind == "slow-prepare":
                time.sleep(n / 10)
            else:
                tick()

        TokenStoreWriter.add = slow_or_dying_add
    else:
        raise SystemExit(f"unknown fault {fault!r}")


def main() -> None:
    fault, prog, *args = sys.argv[1:]
    install(fault)
    sys.argv = [prog, *args]
    if prog == "ct-train":
        from ct_core.cli.train import main as run
    elif prog == "ct-prepare":
        from ct_core.cli.prepare import main as run
    else:
        raise SystemExit(f"unknown program {prog!r}")
    run()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
