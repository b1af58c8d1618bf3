"""Why a file is not a loadable checkpoint, in words a user can act on.

``torch.load`` fails on a damaged or foreign file with messages written
for PyTorch developers (the zip reader's "failed finding central
directory", the unpickler's bare ``KeyError(101)``, a paragraph on
``weights_only``). :func:`why_unreadable` looks at the file itself (its
size, its first bytes, its zip directory; nothing is unpickled) and says
what it is: empty, cut short, a safetensors export, not a checkpoint at
all, or a pickle that a safe load refuses to run.

Example::

    why_unreadable(Path("last.pt"), err)
    # 'the file is cut short (an incomplete torch.save archive of 252,299 bytes); ...'
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then JSON."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= size - 8:
            return False
        try:
            return isinstance(json.loads(f.read(min(n, 1 << 20))), dict)
        except ValueError:
            return False


def _has_pickle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def foreign_format(path: Path) -> str | None:
    """Why ``path`` is a known file that is not a checkpoint, before loading
    it (``torch.load`` reads some safetensors files as plain weights), or
    None."""
    if is_safetensors(path):
        return ("it is a safetensors export (ct-export), which holds no training state; ct-eval and "
                "ct-sample read it, but this needs the .pt checkpoint that ct-train wrote")
    return None


def why_unreadable(path: Path, err: Exception) -> str:
    """The reason ``torch.load(path, weights_only=True)`` raised ``err``, as
    one clause with advice."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes), as a copy or save that never finished leaves it"
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC:
        if not _has_pickle(path):
            return (f"the file is cut short or damaged (an incomplete torch.save archive of {size:,} bytes); "
                    "use an earlier checkpoint, e.g. a step_*.pt beside it")
        unsafe = _UNSAFE_GLOBAL.search(str(err))
        if unsafe or "Weights only load failed" in str(err):
            what = f" ({unsafe.group(1)})" if unsafe else ""
            return (f"it holds Python objects{what} that a safe load refuses, so nothing in it was run; "
                    "ct-train checkpoints hold tensors and plain values only")
        return f"the torch.save archive is damaged ({type(err).__name__}); use an earlier checkpoint"
    return foreign_format(path) or "it is not a PyTorch checkpoint (ct-train writes torch.save zip archives)"
