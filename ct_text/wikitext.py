"""WikiText-103 and WikiText-2 (Merity et al., 2016): word-level Wikipedia text.

Read from the official zip (``wikitext-103-v1.zip``, ``wikitext-2-v1.zip``)
or from its unpacked folder. Either holds three files, possibly inside a
``wikitext-103/`` (``wikitext-2/``) folder::

    wiki.train.tokens   wiki.valid.tokens   wiki.test.tokens

The text is already tokenized (``@-@``, ``@,@``, ``@.@``), every line starts
with a space, an empty line is a single space, and rare words are ``<unk>``.
Each split is one document, the whole file, in file order: Transformer-XL
and the Compressive Transformer paper model a split as one stream, so the
memory carries across articles.

The md5 of ``wikitext-103-v1.zip`` is checked against the published value
when the first split is read (a cache hit reads nothing). A mismatch is a
one-line DataError unless ``data.accept_md5_mismatch=true``. An unpacked
folder has no published checksum and is taken as it is; nor is WikiText-2's
zip checked.

Example::

    corpus = wikitext_corpus(Path("/data/wikitext-103-v1.zip"), "wikitext103")
    corpus.split("valid")[0].read()[:40]     # b' \\n = Homarus gammarus = \\n \\n Homarus ...'
"""

from __future__ import annotations

import functools
import hashlib
import logging
import zipfile
import zlib
from pathlib import Path

from ct_core.errors import DataError
from ct_text.corpus import Corpus, TextDocument

log = logging.getLogger(__name__)

#: Published md5 of ``wikitext-103-v1.zip`` (190,229,076 bytes).
WIKITEXT103_MD5 = "9ddaacaf6af0710eda8c456decff7832"
#: Word types of WikiText-103's training split with ``<eos>`` (Transformer-XL's vocabulary).
WIKITEXT103_VOCAB_SIZE = 267_735
#: corpus name -> the zip's file name and the folder it unpacks to.
ARCHIVES = {"wikitext103": ("wikitext-103-v1.zip", "wikitext-103"), "wikitext2": ("wikitext-2-v1.zip", "wikitext-2")}
SPLIT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
_ACCEPT = "data.accept_md5_mismatch=true"
_CHUNK = 1 << 20


def _layout(corpus: str) -> str:
    zip_name, folder = ARCHIVES[corpus]
    return f"expected {zip_name} or a folder holding wiki.{{train,valid,test}}.tokens (or {folder}/ holding them)"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_zip_md5(path: Path, accept_md5_mismatch: bool = False) -> None:
    """Compare the md5 of WikiText-103's zip at ``path`` with the published one.

    A mismatch is a one-line DataError unless ``accept_md5_mismatch``; then it
    is a warning (a repacked or partial copy for a quick experiment).
    """
    try:
        found = _md5(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check the file") from None
    if found == WIKITEXT103_MD5:
        return
    size = path.stat().st_size
    if not accept_md5_mismatch:
        raise DataError(
            f"{path}: md5 is {found}, expected {WIKITEXT103_MD5} ({size:,} bytes); "
            f"use the original wikitext-103-v1.zip or set {_ACCEPT} to use it anyway"
        )
    log.warning("%s: md5 %s is not wikitext-103-v1.zip's %s (%d bytes); used anyway (%s)",
                path, found, WIKITEXT103_MD5, size, _ACCEPT)


def _zip_members(path: Path, corpus: str) -> dict[str, zipfile.ZipInfo]:
    """split -> the zip member holding it (any folder depth, exactly one each)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable zip ({e}); the file is truncated or corrupt, download it again") from None
    members = {}
    for split, name in SPLIT_FILES.items():
        found = [i for i in infos if not i.is_dir() and i.filename.rsplit("/", 1)[-1] == name]
        if len(found) != 1:
            what = "no member" if not found else f"{len(found)} members"
            raise DataError(f"{path}: the zip has {what} named {name}; {_layout(corpus)} "
                            "(the -raw- archives hold .raw files, not the tokenized text)")
        members[split] = found[0]
    return members


def _read_member(path: Path, info: zipfile.ZipInfo) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"{path}: the zip member {info.filename} is corrupt ({e}); download the zip again") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check the file") from None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check the file and its permissions") from None


def resolve_wikitext(root: str | Path, corpus: str) -> Path:
    """The zip or the folder holding the three ``.tokens`` files, from
    ``data.root``: the zip itself, a folder holding the files, a folder
    holding ``wikitext-103/`` with the files, or a folder holding the zip."""
    root = Path(root).expanduser()
    zip_name, folder = ARCHIVES[corpus]
    if root.is_file():
        return root
    if root.is_dir():
        for candidate in (root, root / folder):
            if all((candidate / name).is_file() for name in SPLIT_FILES.values()):
                return candidate
        if (root / zip_name).is_file():
            return root / zip_name
        present = [name for name in SPLIT_FILES.values() if (root / name).is_file()]
        if present:
            missing = [name for name in SPLIT_FILES.values() if name not in present]
            raise DataError(f"data.root={root}: {', '.join(missing)} missing; {_layout(corpus)}")
        raise DataError(f"data.root={root}: no WikiText files there; {_layout(corpus)}")
    raise DataError(f"data.root={root}: no such file or folder; {_layout(corpus)}")


def wikitext_corpus(source: Path, corpus: str, accept_md5_mismatch: bool = False) -> Corpus:
    """WikiText at ``source`` (a zip or a folder, see :func:`resolve_wikitext`)
    as a :class:`Corpus`: one document per split, read lazily. The md5 of
    WikiText-103's zip is checked once, before the first split is read."""
    source = Path(source)
    documents: list[TextDocument] = []
    if source.is_file():
        members = _zip_members(source, corpus)

        @functools.cache
        def checked() -> None:
            if corpus == "wikitext103":
                check_zip_md5(source, accept_md5_mismatch)

        def read(info: zipfile.ZipInfo) -> bytes:
            checked()
            return _read_member(source, info)

        for split, info in members.items():
            documents.append(TextDocument(split, info.filename, info.file_size, functools.partial(read, info)))
    else:
        for split, name in SPLIT_FILES.items():
            path = source / name
            documents.append(TextDocument(split, name, path.stat().st_size, functools.partial(_read_file, path)))
    sources = [source] if source.is_file() else [source / name for name in SPLIT_FILES.values()]
    return Corpus(corpus, source, documents, sources)
