"""Corpus readers: a folder on disk -> the list of utterances it holds.

A reader only looks at names and metadata files (it never opens audio), so
listing a corpus is cheap and can be hashed to decide whether prepared data
is still current. Files a reader recognises as belonging to the corpus but
cannot use (a name that does not follow the corpus's pattern, a metadata row
whose audio is missing) are returned as skipped, with the reason.

Supported layouts (``data.corpus``):

- ``librispeech``: ``<root>/**/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
  with optional ``<speaker>-<chapter>.trans.txt``; the official subset
  (``train-clean-100``, ``dev-other``, ...) is remembered for the split.
- ``ljspeech``: ``metadata.csv`` (``id|text|normalized``) + ``wavs/<id>.wav``
  (``.flac`` accepted too); one speaker.
- ``vctk``: ``<root>/{wav48_silence_trimmed,wav48,wavs,wav}/<speaker>/*``
  with optional ``txt/<speaker>/<id>.txt``; of VCTK 0.92's two microphones
  only ``mic1`` is kept when both are present.
- ``fsdd``: ``[recordings/]{digit}_{speaker}_{take}.wav``; official split
  test = takes 0-4, train = takes 5-49, of which takes 5-9 are the
  validation set (the same size as the test set).
- ``folder``: every audio file below the root, recursively; no speakers.
- ``demo``: the LJ Speech excerpt shipped in ``ct_audio/data``.

Example::

    listing = list_corpus("fsdd", "/data/free-spoken-digit-dataset")
    listing.utterances[0]   # Utterance(id='0_george_0', speaker='george', split='test', ...)
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Iterator

from ct_audio.audio_io import AUDIO_EXTENSIONS
from ct_core.errors import ConfigError, DataError

#: The LJ Speech excerpt shipped with the package (see ct_audio/data/README.md).
DEMO_ROOT = Path(__file__).resolve().parent / "data" / "ljspeech"

LIBRISPEECH_SUBSETS = {
    "train-clean-100": "train", "train-clean-360": "train", "train-other-500": "train",
    "dev-clean": "valid", "dev-other": "valid",
    "test-clean": "test", "test-other": "test",
}
_LIBRISPEECH_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_FSDD_NAME = re.compile(r"^(\d)_([^_]+)_(\d+)$")
_VCTK_AUDIO_DIRS = ("wav48_silence_trimmed", "wav48", "wavs", "wav")
FSDD_TEST_TAKES = range(0, 5)
FSDD_VALID_TAKES = range(5, 10)


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One audio file of a corpus. ``split`` is the corpus's official split
    (``train``/``valid``/``test``) where it has one."""

    id: str
    path: Path
    speaker: str | None = None
    text: str | None = None
    split: str | None = None


@dataclasses.dataclass
class Listing:
    """What a reader found under ``root``. ``files`` is every file the
    listing depends on (audio and metadata), for the content hash."""

    root: Path
    utterances: list[Utterance]
    skipped: list[tuple[str, str]]  # (path relative to root, reason)
    files: list[Path]


def _walk(folder: Path) -> Iterator[Path]:
    """Files below ``folder`` in sorted order, hidden files and folders left out
    (they hold editor and tool droppings, and temporary token stores)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _audio_files(folder: Path) -> list[Path]:
    return [p for p in _walk(folder) if p.suffix.lower() in AUDIO_EXTENSIONS]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_text(path: Path) -> str:
    # Transcripts are informational; a stray byte must not stop preparation.
    return path.read_bytes().decode("utf-8", errors="replace")


def read_librispeech(root: Path) -> Listing:
    """LibriSpeech tree; transcripts attached where a ``.trans.txt`` exists."""
    utterances, skipped, files = [], [], []
    transcripts: dict[Path, dict[str, str]] = {}
    for path in _audio_files(root):
        files.append(path)
        m = _LIBRISPEECH_NAME.match(path.stem)
        if m is None:
            skipped.append((_rel(path, root), "name is not <speaker>-<chapter>-<utterance>"))
            continue
        if path.parent not in transcripts:
            trans = path.parent / f"{m.group(1)}-{m.group(2)}.trans.txt"
            transcripts[path.parent] = {}
            if trans.is_file():
                files.append(trans)
                for line in _read_text(trans).splitlines():
                    key, _, text = line.strip().partition(" ")
                    transcripts[path.parent][key] = text
        subset = next((LIBRISPEECH_SUBSETS[p] for p in path.relative_to(root).parts
                       if p in LIBRISPEECH_SUBSETS), None)
        utterances.append(Utterance(id=path.stem, path=path, speaker=m.group(1),
                                    text=transcripts[path.parent].get(path.stem), split=subset))
    return Listing(root, utterances, skipped, files)


def read_ljspeech(root: Path) -> Listing:
    """LJ Speech: the rows of ``metadata.csv`` whose audio is in ``wavs/``."""
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise DataError(f"{meta}: not found; an LJ Speech folder holds metadata.csv and wavs/")
    utterances, skipped, files = [], [], [meta]
    for line in _read_text(meta).splitlines():
        fields = line.split("|")  # LJ Speech quotes nothing; a '"' is part of the text
        if not fields[0].strip():
            continue
        uid = fields[0].strip()
        path = next((p for p in (root / "wavs" / f"{uid}{ext}" for ext in (".wav", ".flac"))
                     if p.is_file()), None)
        if path is None:
            skipped.append((f"wavs/{uid}.wav", "listed in metadata.csv but not found"))
            continue
        files.append(path)
        text = fields[-1] if len(fields) > 1 else None  # the normalised column when present
        utterances.append(Utterance(id=uid, path=path, speaker="LJ", text=text))
    return Listing(root, utterances, skipped, files)


def read_vctk(root: Path) -> Listing:
    """VCTK-style ``<audio dir>/<speaker>/*``; the folder name is the speaker."""
    audio_dir = next((root / d for d in _VCTK_AUDIO_DIRS if (root / d).is_dir()), root)
    utterances, skipped, files = [], [], []
    for path in _audio_files(audio_dir):
        files.append(path)
        rel = path.relative_to(audio_dir)
        if len(rel.parts) < 2:
            skipped.append((_rel(path, root), "not inside a <speaker>/ folder"))
            continue
        speaker = rel.parts[0]
        stem = path.stem
        if stem.endswith("_mic2") and any(path.parent.glob(f"{stem[:-5]}_mic1.*")):
            continue  # the same utterance recorded by the second microphone
        base = stem[:-5] if stem.endswith(("_mic1", "_mic2")) else stem
        txt = root / "txt" / speaker / f"{base}.txt"
        text = None
        if txt.is_file():
            files.append(txt)
            text = _read_text(txt).strip()
        utterances.append(Utterance(id=f"{speaker}/{stem}", path=path, speaker=speaker, text=text))
    return Listing(root, utterances, skipped, files)


def read_fsdd(root: Path) -> Listing:
    """Free Spoken Digit Dataset with its official split (takes 0-4 test, 5-9 valid)."""
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    utterances, skipped, files = [], [], []
    for path in _audio_files(folder):
        files.append(path)
        m = _FSDD_NAME.match(path.stem)
        if m is None:
            skipped.append((_rel(path, root), "name is not {digit}_{speaker}_{take}.wav"))
            continue
        take = int(m.group(3))
        split = "test" if take in FSDD_TEST_TAKES else "valid" if take in FSDD_VALID_TAKES else "train"
        utterances.append(Utterance(id=path.stem, path=path, speaker=m.group(2),
                                    text=m.group(1), split=split))
    return Listing(root, utterances, skipped, files)


def read_folder(root: Path) -> Listing:
    """Every audio file below ``root``; speakers unknown."""
    files = _audio_files(root)
    utterances = [Utterance(id=_rel(p, root).rsplit(".", 1)[0], path=p) for p in files]
    return Listing(root, utterances, [], files)


READERS: dict[str, Callable[[Path], Listing]] = {
    "librispeech": read_librispeech,
    "ljspeech": read_ljspeech,
    "vctk": read_vctk,
    "fsdd": read_fsdd,
    "folder": read_folder,
    "demo": read_ljspeech,
}

CORPORA = tuple(READERS)


def corpus_root(corpus: str, root: str | Path | None) -> Path:
    """The folder to read: the shipped sample for ``demo``, else ``root``."""
    if corpus not in READERS:
        raise ConfigError(f"data.corpus={corpus!r} is unknown; choose one of {', '.join(CORPORA)}")
    if corpus == "demo":
        return DEMO_ROOT
    if root is None:
        raise ConfigError(f"data.root is not set; point it at the {corpus} folder")
    return Path(root).expanduser().resolve()


def list_corpus(corpus: str, root: str | Path | None) -> Listing:
    """List ``corpus`` at ``root``. A missing folder, or one without usable
    audio, is a one-line :class:`DataError` naming the folder."""
    folder = corpus_root(corpus, root)
    if folder.is_file():
        raise DataError(f"data.root={folder} is a file; set data.root to the folder that holds the {corpus} corpus")
    if not folder.is_dir():
        raise DataError(f"data.root={folder}: no such folder; set data.root to the folder that holds the {corpus} corpus")
    listing = READERS[corpus](folder)
    if not listing.utterances:
        layout = "" if corpus == "folder" else f" in the {corpus} layout"
        raise DataError(f"data.root={folder}: no audio files found{layout} "
                        f"(looked for {', '.join(sorted(AUDIO_EXTENSIONS))}); point data.root at the folder that holds them")
    return listing
