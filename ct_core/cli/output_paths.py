"""Where commands write, checked before any work is done.

Every command that writes a file the user named (``ct-export OUT``,
``ct-sample --out``, ``ct-eval``'s JSON, ``ct-train``'s run directory) asks
here first, so a bad destination is one line naming the option, and nothing
is replaced by surprise:

- a folder must be creatable and writable (probed with a temporary file,
  which also catches read-only file systems and paths under a file);
- an existing file is replaced only when the command allows it (``--force``);
- a checkpoint is never replaced by another command's output.

Example::

    check_output_file(Path("m.safetensors"), "OUT", replace=args.force, keep=[checkpoint])
    check_writable_dir(Path("runs/x"), "hydra.run.dir")
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterable

from ct_core.errors import ConfigError

#: Names that hold checkpoints; never a target of another command's output.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (files count)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(folder: Path, option: str, value: Path | None = None) -> None:
    """One-line :class:`ConfigError` unless files can be created in ``folder``
    (which may not exist yet; then its closest existing ancestor must allow
    creating it). ``option`` names the setting as the user wrote it, and
    ``value`` its value when that is a file in ``folder``."""
    shown = value if value is not None else folder
    where = _nearest_existing(folder)
    if not where.is_dir():
        raise ConfigError(f"{option}={shown}: {where} is a file, not a folder; choose a path in a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".ct-write-test-")
    except OSError as err:
        raise ConfigError(f"{option}={shown}: cannot write in {where} ({err.strerror}); "
                          "choose a writable location") from None
    os.close(fd)
    os.unlink(probe)


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is (or is named like) a checkpoint: a ``.pt`` name or a
    ``torch.save`` archive. Nothing is unpickled."""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_file(path: Path, option: str, replace: bool, keep: Iterable[Path] = ()) -> None:
    """One-line :class:`ConfigError` unless ``path`` can be written as a file:
    not one of ``keep`` (the command's inputs), not an existing folder or
    checkpoint, not an existing file unless ``replace``, and in a writable
    folder."""
    path = Path(path)
    for kept in keep:
        if _same_file(path, kept):
            raise ConfigError(f"{option}={path} is the input {kept}; writing there would destroy it, "
                              "choose another file")
    if path.is_dir():
        raise ConfigError(f"{option}={path} is a folder; name a file inside it")
    if path.exists():
        if is_checkpoint(path):
            raise ConfigError(f"{option}={path} is a checkpoint; it is never replaced, choose another file")
        if not replace:
            raise ConfigError(f"{option}={path} exists; add --force to replace it")
    check_writable_dir(path.parent, option, value=path)


def fresh_name(folder: Path, stem: str) -> Path:
    """``folder/stem``, or ``folder/stem_2``, ``_3``, ... so that no existing
    file or folder (with any suffix) shares the name."""
    existing = list(folder.iterdir()) if folder.is_dir() else []
    taken = {p.stem for p in existing} | {p.name for p in existing}
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    return folder / name


def default_sample_out(checkpoint: Path) -> Path:
    """Where ``ct-sample`` writes without ``--out``: a new
    ``sample_<date>-<time>`` in the ``samples/`` folder of the checkpoint's
    run (the folder holding ``checkpoints/``; for a checkpoint elsewhere,
    the checkpoint's own folder). Never the name of an earlier sample."""
    folder = Path(checkpoint).resolve().parent
    run = folder.parent if folder.name == "checkpoints" else folder
    return fresh_name(run / "samples", time.strftime("sample_%Y%m%d-%H%M%S"))
