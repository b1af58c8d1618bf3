"""Writing files so that a failed write never leaves half a file under a good name.

Every command writes through here (checkpoints, exports, token stores,
samples, reports, metrics). A file is written to a temporary name in its own
folder, synced to disk and renamed over its name (``os.replace`` is atomic),
so its name holds either the earlier file or the whole new one.

Any failure of the write becomes one :class:`~ct_core.errors.WriteError`
line naming the file, the operating system's reason and what is intact::

    could not write runs/a/eval_valid.json (No space left on device); the earlier file there is unchanged

Libraries do not all report the reason: ``torch.save`` raises
``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``,
soundfile ``LibsndfileError: System error``, safetensors ``SafetensorError
... (os error 27)``, ``numpy.save`` an ``OSError`` without ``errno``. The
reason is taken from the exception chain when it is there, else found by
looking at the folder (read-only file system, free space, this process's
file size limit) and, as a last resort, by writing as many bytes again to a
scratch file beside it. An error with no such reason is a bug and keeps its
traceback.

Permissions do not depend on the umask: files are ``0o644`` and folders
``0o755`` (readable by the group, e.g. a data cache shared by the nodes of
a cluster).

A file size limit (``ulimit -f``) makes the kernel send SIGXFSZ, whose
default action kills the process; Python ignores that signal, so the write
fails with ``EFBIG`` instead and ends here like any other.

Example::

    with atomic_path(run_dir / "eval_valid.json") as tmp:
        tmp.write_text(report)
    write_text(run_dir / "notes.txt", "done\\n")
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from ct_core.errors import UserError, WriteError

try:
    import resource
except ImportError:  # Windows: no file size limit to consult
    resource = None  # type: ignore[assignment]

FILE_MODE = 0o644
DIR_MODE = 0o755
TMP_SUFFIX = ".tmp"
#: Most bytes the last-resort probe writes to learn a hidden reason.
_PROBE_LIMIT = 1 << 20
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")

Intact = str | Callable[[], str] | None


def errno_of(err: BaseException) -> int | None:
    """The ``errno`` an exception or any exception in its chain carries
    (also as ``[Errno N]`` or ``(os error N)`` in its text), else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None)
        if isinstance(code, int) and code > 0:
            return code
        match = _ERRNO_IN_TEXT.search(str(current))
        if match:
            return int(match.group(1) or match.group(2))
        current = current.__cause__ or current.__context__
    return None


def file_size_limit() -> int | None:
    """This process's file size limit in bytes (``ulimit -f``), None if unlimited."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, size: int) -> int | None:
    """Write ``size`` bytes (at most :data:`_PROBE_LIMIT`) to a scratch file
    in ``folder``; the errno that stops it, if any."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".ct-write-probe-")
    except OSError as err:
        return err.errno
    try:
        block = b"\0" * 65536
        left = min(max(size, 0) + len(block), _PROBE_LIMIT)
        while left > 0:
            left -= os.write(fd, block[:left])
        os.fsync(fd)
    except OSError as err:
        return err.errno
    finally:
        os.close(fd)
        os.unlink(name)
    return None


def hidden_errno(folder: Path, size: int) -> int | None:
    """Why a write of ``size`` bytes into ``folder`` failed, when the library
    did not say: a read-only file system, the file size limit, a full
    disk, else whatever a probe write of as many bytes runs into."""
    folder = _existing_ancestor(folder)
    try:
        stats = os.statvfs(folder)
    except OSError as err:
        return err.errno
    if stats.f_flag & os.ST_RDONLY:
        return errno.EROFS
    limit = file_size_limit()
    if limit is not None and size >= limit:
        return errno.EFBIG
    if stats.f_bavail == 0:
        return errno.ENOSPC
    return _probe(folder, size) if folder.is_dir() else errno.ENOTDIR


def reason_text(code: int, path: Path) -> str:
    """``os.strerror(code)``, made specific where it helps: which part of
    the path is a file, and the file size limit."""
    text = os.strerror(code)
    if code in (errno.EEXIST, errno.ENOTDIR):  # a folder was needed where a file is
        blocker = _existing_ancestor(Path(path))
        if not blocker.is_dir():
            return f"{text}: {blocker} is a file, not a folder"
    if code == errno.EISDIR:
        return f"{text}: {path} is a folder"
    limit = file_size_limit()
    if code == errno.EFBIG and limit is not None:
        return f"{text}: over this process's file size limit (ulimit -f) of {limit:,} bytes"
    return text


def write_failure(err: BaseException, path: Path, intact: Intact = None, size: int = 0) -> WriteError | None:
    """The one-line :class:`WriteError` for ``err``, raised while writing
    ``path`` (``size`` bytes had been written), or None when ``err`` is not a
    failure of the write (a bug, or a user error raised by the caller)."""
    if isinstance(err, UserError) or not isinstance(err, Exception):
        return None
    path = Path(path)
    code = errno_of(err)
    if code is None:
        code = hidden_errno(path.parent, size)
    if code is None:
        return None
    text = intact() if callable(intact) else intact
    return WriteError(f"could not write {path} ({reason_text(code, path)}); "
                      f"{text or 'nothing was written there'}")


def make_dirs(folder: Path, mode: int = DIR_MODE) -> Path:
    """``mkdir -p folder``; each folder it creates gets ``mode`` whatever the umask."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for part in reversed(missing):
        try:
            part.mkdir(mode=mode)
        except FileExistsError:
            if not part.is_dir():
                raise
            continue  # another process made it
        os.chmod(part, mode)
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    return folder


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (POSIX only)."""
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the data must be on disk before the rename can expose it
    finally:
        os.close(fd)


def _default_intact(path: Path) -> str:
    return "the earlier file there is unchanged" if path.is_file() else "nothing was written there"


@contextlib.contextmanager
def atomic_path(path: Path, intact: Intact = None, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` for the caller to write
    by name; then sync it and rename it over ``path``. On any failure the
    temporary file is removed, ``path`` is as it was, and a failure of the
    write is raised as one-line :class:`WriteError` ending in ``intact``
    (default: whether an earlier file is unchanged)."""
    path = Path(path)
    intact = intact if intact is not None else _default_intact(path)
    tmp: Path | None = None
    try:
        make_dirs(path.parent)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
        tmp = None
    except BaseException as err:
        size = 0
        if tmp is not None:
            with contextlib.suppress(OSError):
                size = tmp.stat().st_size
            tmp.unlink(missing_ok=True)
        failure = write_failure(err, path, intact, size)
        if failure is None:
            raise
        raise failure from None
    try:
        fsync_dir(path.parent)
    except OSError:
        pass  # the file is in place; some file systems cannot sync a folder


def write_bytes(path: Path, data: bytes, intact: Intact = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, intact) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str, intact: Intact = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    return write_bytes(path, text.encode("utf-8"), intact)
