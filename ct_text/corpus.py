"""A text corpus as ordered documents of raw bytes, before tokenization.

Every reader of the text front end (:mod:`ct_text.enwik8`, :mod:`ct_text.pg19`,
:mod:`ct_text.text_files`) returns a :class:`Corpus`: the documents of each
split, loaded lazily, plus the source files whose path, size and mtime key
the prepared-data cache.

How text is read (the same for every corpus):

* Bytes, never decoded lines: what the tokenizer sees is exactly the bytes on
  disk, so CRLF line endings stay ``\\r\\n`` (PG-19 itself keeps them), and
  bits per byte count the bytes on disk.
* A leading UTF-8 byte-order mark (``EF BB BF``) of a book or text file is
  stripped: it is an encoding marker, not text. enwik8 is a fixed benchmark
  and is taken as is.
* Invalid UTF-8 never fails: the byte tokenizer needs no decoding, and where
  text is needed (SentencePiece, word counts) it is decoded with
  ``errors="replace"`` (each bad byte becomes U+FFFD).
* A document that is empty (after the BOM is stripped) is skipped and listed
  in the manifest: it has no token to predict, and it holds no word or byte,
  so the split's word and byte counts are unchanged.

Example::

    corpus = text_file_corpus(Path("input.txt"), valid_fraction=0.1, test_fraction=0.0)
    data = corpus.split("valid")[0].read()     # the last 10% of the bytes
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ct_core.errors import DataError

BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class TextDocument:
    """One document (a book, a file, one enwik8 split) of one split.

    ``size`` is the number of bytes on disk, known without reading (used to
    share a tokenizer's training budget); ``read()`` returns the document's
    bytes, BOM already stripped where the reader strips it.
    """

    split: str
    name: str
    size: int
    load: Callable[[], bytes] = field(repr=False, compare=False)
    meta: Mapping[str, str] = field(default_factory=dict)

    def read(self) -> bytes:
        return self.load()


@dataclass
class Corpus:
    """Documents of every split, in order, and the files they come from."""

    name: str
    root: Path
    documents: list[TextDocument]
    sources: list[Path]

    def split(self, split: str) -> list[TextDocument]:
        """The documents of ``split`` (one of ``train``, ``valid``, ``test``), in order."""
        return [d for d in self.documents if d.split == split]

    def listing(self) -> list[list]:
        """``[path, size, mtime_ns]`` of every source file: what keys the cache.
        Cheap (no file is read), so a cache hit costs a directory walk."""
        rows = []
        for path in self.sources:
            st = path.stat()
            rows.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
        return rows


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark."""
    return data[len(BOM):] if data.startswith(BOM) else data


def read_text_file(path: Path) -> bytes:
    """The bytes of text file ``path``, BOM stripped; unreadable -> one-line DataError."""
    try:
        return strip_bom(Path(path).read_bytes())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check the file and its permissions") from None


def decode_text(data: bytes) -> str:
    """``data`` as text; invalid UTF-8 becomes U+FFFD instead of failing."""
    return data.decode("utf-8", errors="replace")


def count_words(text: str) -> int:
    """Whitespace-separated words of ``text``, exactly ``len(text.split())``.

    Counted line by line so that a 90 MB split never builds a list of
    millions of strings; ``\\n`` is whitespace, so no word spans two lines and
    the sum equals the count over the whole text.
    """
    return sum(len(line.split()) for line in text.split("\n"))


