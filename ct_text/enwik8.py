"""enwik8: the first 10^8 bytes of an English Wikipedia XML dump (Hutter Prize).

Read from ``enwik8.zip`` (single member ``enwik8``) or from the raw file; the
md5 of the raw bytes is checked against the published value. The standard
split (Transformer-XL's ``prep_enwik8.py``, the Compressive Transformer paper)
takes bytes in file order: train ``[0, 90M)``, valid ``[90M, 95M)``, test
``[95M, 100M)``. A file of another size (only with
``data.accept_md5_mismatch=true``) is split in the same proportions 90/5/5 by
:func:`split_ranges`. Bytes are taken as is: no BOM stripping, no line-ending
change, so the split is the benchmark's.

Example::

    split_ranges(100_000_000)["valid"]      # (90_000_000, 95_000_000)
    corpus = enwik8_corpus(Path("enwik8.zip"), accept_md5_mismatch=False)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from ct_core.errors import DataError
from ct_text.corpus import Corpus, TextDocument

log = logging.getLogger(__name__)

#: Where ``data.download=true`` fetches the canonical zip from (LTCB / Hutter Prize).
ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"
ENWIK8_BYTES = 100_000_000
MEMBER = "enwik8"
_ZIP_MAGIC = b"PK\x03\x04"
_ACCEPT = "data.accept_md5_mismatch=true"


def split_ranges(n_bytes: int) -> dict[str, tuple[int, int]]:
    """Byte ranges ``[start, stop)`` of train / valid / test for a file of
    ``n_bytes``: 90% / 5% / 5% in file order, the test split taking the
    rounding remainder. For the real file: 90,000,000 / 5,000,000 / 5,000,000.
    """
    n_train = n_bytes * 90 // 100
    n_valid = n_bytes * 5 // 100
    return {
        "train": (0, n_train),
        "valid": (n_train, n_train + n_valid),
        "test": (n_train + n_valid, n_bytes),
    }


def is_zip(path: Path) -> bool:
    """Whether ``path`` is meant to be a zip: by suffix or by the local-header
    magic, so a truncated zip (no central directory) still counts as one and
    gets a zip error instead of an md5 mismatch."""
    if path.suffix.lower() == ".zip":
        return True
    with open(path, "rb") as f:
        return f.read(4) == _ZIP_MAGIC


def _open_member(path: Path) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(
            f"{path}: not a readable zip ({e}); the file is truncated or corrupt, download it again"
        ) from None
    try:
        info = archive.getinfo(MEMBER)
    except KeyError:
        names = archive.namelist()[:5]
        archive.close()
        raise DataError(f"{path}: the zip has no member {MEMBER!r} (has {names}); use the enwik8.zip from {ENWIK8_URL}") from None
    return archive, info


def raw_size(path: Path) -> int:
    """Size of the raw enwik8 bytes in ``path`` (zip member or raw file), without reading them."""
    if is_zip(path):
        archive, info = _open_member(path)
        archive.close()
        return info.file_size
    return path.stat().st_size


def read_enwik8(path: Path, accept_md5_mismatch: bool = False) -> bytes:
    """The raw bytes of enwik8 from a zip or the raw file, md5-checked.

    A mismatch is a one-line DataError unless ``accept_md5_mismatch``; then it
    is a warning (e.g. a truncated copy for a quick experiment).
    """
    path = Path(path)
    try:
        if is_zip(path):
            archive, info = _open_member(path)
            with archive:
                data = archive.read(info)
        else:
            data = path.read_bytes()
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"{path}: the zip member {MEMBER!r} is corrupt ({e}); download enwik8.zip again") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check the file") from None
    found = hashlib.md5(data).hexdigest()
    if found != ENWIK8_MD5:
        if not accept_md5_mismatch:
            raise DataError(
                f"{path}: md5 of the raw enwik8 bytes is {found}, expected {ENWIK8_MD5} "
                f"({len(data):,} bytes); use the original file or set {_ACCEPT} to use it anyway"
            )
        log.warning("%s: md5 %s is not enwik8's %s (%d bytes); used anyway (%s)",
                    path, found, ENWIK8_MD5, len(data), _ACCEPT)
    return data


def download_enwik8(target: Path, progress: bool = True) -> Path:
    """Fetch :data:`ENWIK8_URL` to ``target`` (atomically: ``.part`` then rename)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    url = ENWIK8_URL  # read at call time so tests can point it at a dead address
    log.info("downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="enwik8.zip", disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"could not download {url} ({reason}); download enwik8.zip yourself "
            f"and set data.path=/path/to/enwik8.zip"
        ) from None
    os.replace(part, target)
    return target


def resolve_enwik8(path: str | None, download: bool, cache_dir: Path, progress: bool = True) -> Path:
    """The enwik8 file to read: ``data.path`` (a file, or a folder holding
    ``enwik8.zip`` or ``enwik8``), else with ``data.download=true`` a copy in
    ``<cache_dir>/text/enwik8.zip``, fetched when missing."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            for name in ("enwik8.zip", "enwik8"):
                if (p / name).is_file():
                    return p / name
        elif p.is_file():
            return p
        if not download:
            raise DataError(
                f"data.path={path}: no enwik8.zip or enwik8 there; put the file there "
                f"or set data.download=true to fetch {ENWIK8_URL}"
            )
    elif not download:
        raise DataError("data.path is not set; set data.path=/path/to/enwik8.zip or data.download=true")
    cached = Path(cache_dir) / "text" / "enwik8.zip"
    return cached if cached.is_file() else download_enwik8(cached, progress)


def enwik8_corpus(path: Path, accept_md5_mismatch: bool = False) -> Corpus:
    """enwik8 as a :class:`Corpus`: one document per split, in file order.

    The file is read (and md5-checked) once, the first time a document is
    read; listing the corpus only opens the zip's directory.
    """
    path = Path(path)

    @functools.cache
    def data() -> bytes:
        return read_enwik8(path, accept_md5_mismatch)

    documents = [
        TextDocument(split, f"enwik8[{start}:{stop}]", stop - start,
                     functools.partial(lambda a, b: data()[a:b], start, stop))
        for split, (start, stop) in split_ranges(raw_size(path)).items()
    ]
    return Corpus("enwik8", path, documents, [path])
