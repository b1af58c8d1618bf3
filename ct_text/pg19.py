"""PG-19 (Rae et al., 2019): Project Gutenberg books published before 1919.

The official layout (google-deepmind/pg19)::

    <root>/metadata.csv                 no header; id, short title, year, url
    <root>/train/<book_id>.txt          one book per file, UTF-8
    <root>/validation/<book_id>.txt
    <root>/test/<book_id>.txt

One document per book; the split ``validation`` is this project's ``valid``.
Books are ordered by numeric id inside a split, so the order never depends on
the file system. Books are read as bytes (see :mod:`ct_text.corpus`: CRLF
kept, BOM stripped, invalid UTF-8 harmless, empty books skipped).

Example::

    corpus = pg19_corpus(Path("/data/pg19"))
    corpus.split("valid")[0].meta["title"]
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from ct_core.errors import DataError
from ct_text.corpus import Corpus, TextDocument, decode_text, read_text_file

log = logging.getLogger(__name__)

#: PG-19 folder name -> split name used everywhere else.
SPLIT_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
METADATA = "metadata.csv"


def read_metadata(path: Path) -> dict[str, dict[str, str]]:
    """``book_id -> {"title", "year", "url"}`` from PG-19's ``metadata.csv``.

    The official file has no header and no quoting, and its short titles
    contain no commas; the title is nevertheless taken as everything between
    the first and the last two fields, so a comma in a title would not shift
    the year and url.
    """
    rows: dict[str, dict[str, str]] = {}
    text = decode_text(read_text_file(path))
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) < 4:
            raise DataError(
                f"{path}:{line_no}: expected 4 comma-separated fields (id, title, year, url), "
                f"found {len(fields)}; is this PG-19's {METADATA}?"
            )
        rows[fields[0].strip()] = {
            "title": ",".join(fields[1:-2]),
            "year": fields[-2].strip(),
            "url": fields[-1].strip(),
        }
    return rows


def _book_order(path: Path) -> tuple[int, int, str]:
    # Numeric ids sort as numbers (84 before 1342); any other name after them.
    stem = path.stem
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def pg19_corpus(root: Path) -> Corpus:
    """The PG-19 tree at ``root`` as a :class:`Corpus` (books are read lazily).

    A missing root, split folder or ``metadata.csv`` is a one-line DataError
    naming the path.
    """
    root = Path(root).expanduser()
    layout = "expected PG-19's layout {train,validation,test}/<book_id>.txt + metadata.csv"
    if not root.is_dir():
        raise DataError(f"data.root={root}: no such folder; {layout}")
    metadata_path = root / METADATA
    if not metadata_path.is_file():
        raise DataError(f"{metadata_path}: missing; {layout}")
    metadata = read_metadata(metadata_path)
    documents: list[TextDocument] = []
    sources: list[Path] = [metadata_path]
    for folder, split in SPLIT_FOLDERS.items():
        split_dir = root / folder
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: missing split folder; {layout}")
        for book in sorted(split_dir.glob("*.txt"), key=_book_order):
            book_id = book.stem
            meta = metadata.get(book_id)
            if meta is None:
                log.warning("%s: book %s is not in %s; kept without title", book, book_id, metadata_path)
                meta = {"title": "", "year": "", "url": ""}
            documents.append(TextDocument(
                split, f"{folder}/{book.name}", book.stat().st_size,
                functools.partial(read_text_file, book), {"id": book_id, **meta},
            ))
            sources.append(book)
    return Corpus("pg19", root, documents, sources)
