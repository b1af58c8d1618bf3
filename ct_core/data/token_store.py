"""Prepared token shards on disk: one memmap per split plus a document index.

Layout of a store directory::

    manifest.json        what was prepared from what (front end decides)
    <split>.bin          all documents of the split, concatenated, raw dtype
    <split>.idx.npy      int64 offsets [n_documents + 1] into <split>.bin

A store is written into a temporary sibling directory and renamed into place
only when complete, so an interrupted preparation never leaves a store that
looks finished; a later run simply prepares again. A failed write (full
disk, file size limit, no permission) is one line naming the file and the
reason, and leaves the cache as it was. Front ends prepare under
:func:`store_lock`, so that two processes asking for the same store at once
prepare it once: the second waits, then finds it ready. A finished store in
a read-only cache is used without the lock. Stores are readable by the
group (folders ``0o755``, files ``0o644``) whatever the umask.

Example::

    with TokenStoreWriter(path, dtype=np.uint8) as w:
        w.add("train", np.array([1, 2, 3], dtype=np.uint8))
        w.finish({"source": "demo"})
    store = TokenStore(path)
    store.documents("train")[0]    # memmap view: [1, 2, 3]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from ct_core.atomic_write import DIR_MODE, FILE_MODE, fsync_dir, make_dirs, reason_text, write_failure
from ct_core.errors import DataError, WriteError

try:
    import fcntl
except ImportError:  # Windows: no lock, concurrent preparations may both write
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """Where prepared data goes unless a recipe sets ``data.cache_dir``."""
    return Path(os.environ.get("CT_CACHE_DIR", Path.home() / ".cache" / "compressive-transformer"))


def content_hash(obj: Any) -> str:
    """A short stable hash of JSON-able ``obj`` (settings + source listing)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids ``< vocab_size``."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _cache_failure(err: OSError, path: Path) -> WriteError:
    return WriteError(f"could not prepare data in the cache {path.parent} ({reason_text(err.errno or 0, path)}); "
                      "set data.cache_dir (or $CT_CACHE_DIR) to a writable folder")


@contextlib.contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """Hold the preparation lock of the store at ``path`` (``flock`` on
    ``.<name>.lock`` beside it) for the ``with`` block. Check whether the
    store exists inside the block: another process may have just finished
    it. The operating system releases the lock of a process that dies, and
    the temporary folders such a process left are removed here.

    A cache that cannot be written (read-only, another user's) but holds
    the finished store needs no lock: the block runs without one, and
    reading the store is all it can do. Otherwise an unwritable cache is
    one line naming it."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    try:
        make_dirs(path.parent)
        fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as err:
        if TokenStore.exists(path):
            yield  # a finished store is only read: no lock needed
            return
        raise _cache_failure(err, path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process that prepares %s", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        # Writers of this store hold the lock, so any temporary folder of it is a dead one's.
        for stale in path.parent.glob(f".{path.name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        os.close(fd)


class TokenStoreWriter:
    """Append documents split by split, then :meth:`finish` atomically.

    A failed write (full disk, file size limit, no permission) removes the
    temporary folder and raises a one-line :class:`WriteError` naming the
    file; the cache is left as it was."""

    def __init__(self, path: Path, dtype: np.dtype | type) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self._files: dict[str, Any] = {}
        self._offsets: dict[str, list[int]] = {}
        self._tmp: Path | None = None
        with self._failures_as_one_line(self.path / MANIFEST):
            make_dirs(self.path.parent)
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))

    @contextlib.contextmanager
    def _failures_as_one_line(self, target: Path) -> Iterator[None]:
        """Turn a failed write of ``target`` (its final name in the store)
        into one line, after removing everything written so far."""
        try:
            yield
        except Exception as err:
            size = 0
            with contextlib.suppress(OSError, TypeError):
                size = (self._tmp / target.name).stat().st_size  # type: ignore[operator]
            self.abort()
            failure = write_failure(err, target, "no prepared data was left in the cache", size)
            if failure is None:
                raise
            raise failure from None

    def _open(self, split: str) -> None:
        self._files[split] = open(self._tmp / f"{split}.bin", "wb")  # type: ignore[operator]
        self._offsets[split] = [0]

    def add(self, split: str, tokens: np.ndarray) -> None:
        """Append one document ``[L]`` to ``split``."""
        with self._failures_as_one_line(self.path / f"{split}.bin"):
            if split not in self._files:
                self._open(split)
            arr = np.ascontiguousarray(tokens, dtype=self.dtype)
            self._files[split].write(arr.tobytes())
            self._offsets[split].append(self._offsets[split][-1] + arr.size)

    def finish(self, manifest: Mapping[str, Any], splits: Iterable[str] = ()) -> Path:
        """Write the index and manifest, then move the store into place.
        ``splits`` names splits that must exist even when empty."""
        assert self._tmp is not None
        for split in splits:
            if split not in self._files:
                with self._failures_as_one_line(self.path / f"{split}.bin"):
                    self._open(split)
        for split, f in self._files.items():
            with self._failures_as_one_line(self.path / f"{split}.bin"):
                f.flush()
                os.fsync(f.fileno())
                f.close()
            with self._failures_as_one_line(self.path / f"{split}.idx.npy"):
                np.save(self._tmp / f"{split}.idx.npy", np.asarray(self._offsets[split], dtype=np.int64))
        full = dict(manifest)
        full["dtype"] = self.dtype.name
        full["splits"] = {s: {"documents": len(o) - 1, "tokens": o[-1]} for s, o in self._offsets.items()}
        with self._failures_as_one_line(self.path / MANIFEST):
            (self._tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=str))
            # Readable by the group whatever the umask: a cache may be shared by the nodes of a cluster.
            for file in self._tmp.iterdir():
                os.chmod(file, FILE_MODE)
            os.chmod(self._tmp, DIR_MODE)
            if self.path.exists():
                shutil.rmtree(self.path)
            os.replace(self._tmp, self.path)
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()  # closing flushes: a full disk fails again here
        self._files.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "TokenStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is not None and self._tmp.exists():
            self.abort()


class TokenStore:
    """Read-only view of a finished store."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise DataError(f"{self.path}: no prepared data here (missing {MANIFEST}); run ct-prepare")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        self.dtype = np.dtype(self.manifest["dtype"])

    @staticmethod
    def exists(path: Path) -> bool:
        return (Path(path) / MANIFEST).is_file()

    def splits(self) -> list[str]:
        return sorted(self.manifest.get("splits", {}))

    def offsets(self, split: str) -> np.ndarray:
        idx = self.path / f"{split}.idx.npy"
        if not idx.is_file():
            raise DataError(f"{self.path}: split {split!r} was not prepared; have {self.splits()}")
        return np.load(idx)

    def documents(self, split: str) -> list[np.ndarray]:
        """Documents of ``split`` as read-only memmap views ``[L_i]``."""
        offsets = self.offsets(split)
        if offsets[-1] == 0:
            return [np.zeros(0, dtype=self.dtype) for _ in range(len(offsets) - 1)]
        data = np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r")
        return [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
