"""Any text file, or any folder of text files, as a corpus for quick experiments.

* A single file is one document cut into contiguous splits by byte offset in
  file order: train, then valid, then test. With the defaults
  (``valid_fraction=0.1``, ``test_fraction=0``) the last 10% of the bytes is
  valid, exactly as nanoGPT splits tiny-shakespeare
  (train ``[0, int(0.9 n))``, valid ``[int(0.9 n), n)``).
* A folder is one document per file: every non-hidden file below it, sorted by
  relative path; the first files are train, the next
  ``round(valid_fraction * n)`` (at least one when the fraction is positive)
  are valid, the last ``round(test_fraction * n)`` are test. Whole files, no
  randomness, so the split never changes between runs.

Files are read as bytes (see :mod:`ct_text.corpus`: CRLF kept, BOM stripped,
invalid UTF-8 harmless, empty files skipped).

Example::

    single_file_ranges(1_115_394, 0.1, 0.0)["valid"]    # (1_003_854, 1_115_394)
"""

from __future__ import annotations

import functools
from pathlib import Path

from ct_core.errors import DataError
from ct_text.corpus import BOM, Corpus, TextDocument, read_text_file


def single_file_ranges(n_bytes: int, valid_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """Byte ranges ``[start, stop)`` of train / valid / test of one file, in file order."""
    train_end = int(n_bytes * (1.0 - valid_fraction - test_fraction))
    valid_end = int(n_bytes * (1.0 - test_fraction))
    return {"train": (0, train_end), "valid": (train_end, valid_end), "test": (valid_end, n_bytes)}


def folder_split_counts(n_files: int, valid_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many whole files go to train / valid / test (in that order)."""
    counts = {}
    for split, fraction in (("valid", valid_fraction), ("test", test_fraction)):
        # A positive fraction always gets a file, or a small folder would
        # silently have nothing to evaluate on.
        counts[split] = max(1, round(n_files * fraction)) if fraction > 0 else 0
    counts["train"] = n_files - counts["valid"] - counts["test"]
    return {"train": counts["train"], "valid": counts["valid"], "test": counts["test"]}


def _list_folder(folder: Path) -> list[Path]:
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _single_file_corpus(path: Path, valid_fraction: float, test_fraction: float) -> Corpus:
    with open(path, "rb") as f:
        has_bom = f.read(len(BOM)) == BOM
    n_bytes = path.stat().st_size - (len(BOM) if has_bom else 0)
    if n_bytes == 0:
        raise DataError(f"data.path={path}: the file is empty; point data.path at a text file")

    @functools.cache
    def data() -> bytes:
        return read_text_file(path)

    documents = [
        TextDocument(split, f"{path.name}[{start}:{stop}]", stop - start,
                     functools.partial(lambda a, b: data()[a:b], start, stop))
        for split, (start, stop) in single_file_ranges(n_bytes, valid_fraction, test_fraction).items()
    ]
    return Corpus("file", path, documents, [path])


def _folder_corpus(folder: Path, valid_fraction: float, test_fraction: float) -> Corpus:
    files = _list_folder(folder)
    counts = folder_split_counts(len(files), valid_fraction, test_fraction)
    if counts["train"] < 1:
        raise DataError(
            f"data.path={folder}: {len(files)} file(s) cannot give train, valid and test at least "
            "one whole file each; add files or lower data.valid_fraction / data.test_fraction"
        )
    splits = ["train"] * counts["train"] + ["valid"] * counts["valid"] + ["test"] * counts["test"]
    documents = [
        TextDocument(split, path.relative_to(folder).as_posix(), path.stat().st_size,
                     functools.partial(read_text_file, path))
        for split, path in zip(splits, files)
    ]
    return Corpus("file", folder, documents, files)


def text_file_corpus(path: Path, valid_fraction: float = 0.1, test_fraction: float = 0.0) -> Corpus:
    """A text file or a folder of text files as a :class:`Corpus` (see the module docstring)."""
    path = Path(path).expanduser()
    if path.is_file():
        return _single_file_corpus(path, valid_fraction, test_fraction)
    if path.is_dir():
        return _folder_corpus(path, valid_fraction, test_fraction)
    raise DataError(f"data.path={path}: no such file or folder; point it at a text file or a folder of text files")
