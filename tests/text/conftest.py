"""Tiny corpora the text tests build in tmp_path."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.text.handmade_wikitext import wikitext_lines, write_wikitext, zip_wikitext

_WORDS = (
    "the of and to in was he that it his her with as had for you not be at on she but is my "
    "him which by all this have from so they were one said me when there would we been what "
    "who could no an are their them more if will upon or into than then very now time little "
    "man great such before could about after made only other down long old know like day"
).split()


def english(n_words: int, seed: int, newline: str = "\n") -> str:
    """Deterministic word salad with sentences and lines, ``n_words`` long."""
    rng = random.Random(seed)
    lines, line = [], []
    for i in range(n_words):
        word = rng.choice(_WORDS)
        line.append(word.capitalize() if not line else word)
        if len(line) >= rng.randint(6, 12) or i == n_words - 1:
            lines.append(" ".join(line) + ".")
            line = []
    return newline.join(lines) + newline


def write_pg19(root: Path, books: dict[str, bytes], metadata: bool = True) -> Path:
    """Write a PG-19 tree: ``books`` maps ``"<folder>/<id>.txt"`` to bytes."""
    for folder in ("train", "validation", "test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for rel, data in books.items():
        (root / rel).write_bytes(data)
        book_id = Path(rel).stem
        rows.append(f"{book_id},Book {book_id} by Someone,19{int(book_id) % 100:02d},http://www.gutenberg.org/ebooks/{book_id}\n")
    if metadata:
        (root / "metadata.csv").write_text("".join(rows))
    return root


def tricky_books() -> dict[str, bytes]:
    """LF, CRLF, a BOM, invalid UTF-8, non-ASCII and an empty book, in every split."""
    return {
        "train/1342.txt": english(3000, 1).encode(),
        "train/84.txt": english(2000, 2, newline="\r\n").encode(),
        "train/2701.txt": b"\xef\xbb\xbf" + "Caf\u00e9 \u201cquoted\u201d \u2014 dash\n".encode() + english(1500, 3).encode(),
        "validation/11.txt": english(400, 4, newline="\r\n").encode() + b"bad \xff\xfe bytes \xc3\n",
        "validation/1661.txt": b"",
        "test/10146.txt": english(500, 5).encode(),
        "test/10321.txt": b"\xef\xbb\xbf",
    }


@pytest.fixture
def pg19_tree(tmp_path: Path) -> Path:
    return write_pg19(tmp_path / "pg19", tricky_books())


def make_zip(path: Path, data: bytes, member: str = "enwik8") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, data)
    return path


@pytest.fixture
def corpora() -> SimpleNamespace:
    """The helpers above, as a fixture: test modules never import conftest by
    name (another test folder may have a conftest of its own)."""
    return SimpleNamespace(english=english, write_pg19=write_pg19, tricky_books=tricky_books,
                           make_zip=make_zip, wikitext_lines=wikitext_lines, write_wikitext=write_wikitext,
                           zip_wikitext=zip_wikitext)
