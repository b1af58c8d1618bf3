"""One live run per run directory: an exclusive lock held while training.

The lock is ``fcntl.flock`` on ``<run_dir>/.ct-train.lock``. The operating
system releases it when the holder exits, however it exits (SIGKILL, a
crash, a lost node), so a stale lock file never blocks ``resume=auto``: only
a live process holds the lock. The file records the holder's pid, so the
refusal can name it.

Under ``torchrun`` only rank 0 takes the lock (the other ranks share its
directory). Where ``fcntl`` does not exist (Windows) there is no lock.

Example::

    hold_run_dir(run_dir)     # RunDirInUse if another live process trains there
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ct_core.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".ct-train.lock"

#: Locks this process holds, by resolved run directory; released at exit.
_HELD: dict[Path, int] = {}


class RunDirInUse(UserError):
    """Another live process trains in this run directory."""


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def hold_run_dir(run_dir: Path) -> None:
    """Take the run directory's lock for the rest of this process (a no-op if
    this process holds it already); :class:`RunDirInUse` naming the holder's
    pid if a live process has it."""
    run_dir = Path(run_dir).resolve()
    if fcntl is None or run_dir in _HELD:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise RunDirInUse(
            f"{run_dir} is in use by a live ct-train ({_holder(path)}, lock {path.name}); "
            "wait for it to end, or train in another hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[run_dir] = fd


def release_run_dir(run_dir: Path) -> None:
    """Give the lock back before this process ends (tests, notebooks)."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)
