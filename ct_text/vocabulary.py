"""A word vocabulary built the way Transformer-XL builds WikiText-103's.

The paper compares with Transformer-XL's WikiText-103 numbers, so the
vocabulary and the token stream follow its rules (``utils/vocabulary.py``
and ``data_utils.py`` of kimiyoung/transformer-xl):

* Text is read line by line as Python reads a UTF-8 text file (universal
  newlines: ``\\n``, ``\\r\\n`` and ``\\r`` end a line; a last line without
  a newline still counts). Each line is split on whitespace (``str.split()``),
  case kept, and followed by one ``<eos>`` -- an empty line too, so a
  WikiText line of a single space is the token ``<eos>`` alone.
* Words are counted on the training split only, without ``<eos>``.
* Ids: ``<eos>`` is 0; then every word of the training split by descending
  count, ties in order of first occurrence in the training split (a stable
  sort of the counts, as ``Counter.most_common``). WikiText already writes
  rare words as ``<unk>``, so ``<unk>`` is an ordinary word of the training
  split with its own rank; only when the training split has none is it
  appended last, so that unknown words of other splits and prompts have an id.
* Words of other splits missing from the vocabulary become ``<unk>`` (none in
  WikiText-103, whose vocabulary is closed; the store counts them).

WikiText-103's training split gives 267,735 ids (267,734 words and
``<eos>``). Decoding joins the words of a line with single spaces and turns
``<eos>`` into a newline, so ``text -> ids -> text`` gives the text with its
whitespace normalised and ``ids -> text -> ids`` gives the ids back.

The serialized vocabulary is its words in id order, one per line, UTF-8 (a
word never holds whitespace). The same bytes are the cached file and, as a
``uint8`` tensor, the checkpoint's copy; their sha256 names the vocabulary.

Example::

    vocab = WordVocabulary.build([b" the cat \\n the dog \\n"])
    vocab.words                                  # ['<eos>', 'the', 'cat', 'dog', '<unk>']
    vocab.encode(b" the bird \\n").tolist()      # [1, 4, 0]
    vocab.token_bytes([1, 2, 0, 1, 3])           # b'the cat\\nthe dog'
"""

from __future__ import annotations

import array
import hashlib
import io
import itertools
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ct_core.atomic_write import make_dirs, write_bytes

EOS = "<eos>"
UNK = "<unk>"
_MISSING = -1


def iter_lines(data: bytes) -> Iterator[str]:
    """The lines of ``data`` as Python iterates a UTF-8 text file (universal
    newlines); invalid UTF-8 becomes U+FFFD."""
    with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline=None) as lines:
        yield from lines


def count_words(texts: Iterable[bytes]) -> Counter:
    """Occurrences of every whitespace-separated word of ``texts``, in order of
    first occurrence (no ``<eos>``: Transformer-XL counts words only)."""
    counts: Counter = Counter()
    for data in texts:
        for line in iter_lines(data):
            counts.update(line.split())
    return counts


class WordVocabulary:
    """Words <-> ids; ``<eos>`` is id 0 and ``<unk>`` is always present."""

    kind = "words"

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words) or not self.words or self.words[0] != EOS or UNK not in self.index:
            raise ValueError("a word vocabulary lists distinct words, <eos> first, and holds <unk>")
        self.vocab_size = len(self.words)
        self.eos_id = 0
        self.unk_id = self.index[UNK]
        self._bytes: bytes | None = None

    @classmethod
    def from_counts(cls, counts: Counter) -> "WordVocabulary":
        """``<eos>``, then the words by descending count (a stable sort: ties
        keep their first-occurrence order), then ``<unk>`` if it never occurred."""
        ranked = sorted(counts.items(), key=lambda item: -item[1])
        words = [EOS] + [w for w, _ in ranked if w != EOS]
        if UNK not in counts:
            words.append(UNK)
        return cls(words)

    @classmethod
    def build(cls, train_texts: Iterable[bytes]) -> "WordVocabulary":
        """The vocabulary of the training split's texts."""
        return cls.from_counts(count_words(train_texts))

    # ------------------------------------------------------------ encoding
    def encode_counted(self, data: bytes) -> tuple[np.ndarray, int]:
        """Ids ``[L]`` int32 of ``data`` (every line's words, then ``<eos>``)
        and how many words were not in the vocabulary (they became ``<unk>``)."""
        ids = array.array("i")
        lookup = self.index.get
        for line in iter_lines(data):
            ids.extend(map(lookup, line.split(), itertools.repeat(_MISSING)))
            ids.append(self.eos_id)
        out = np.frombuffer(ids, dtype=np.int32).copy() if ids else np.zeros(0, dtype=np.int32)
        missing = out == _MISSING
        out[missing] = self.unk_id
        return out, int(missing.sum())

    def encode(self, data: bytes) -> np.ndarray:
        """Ids ``[L]`` int32 of ``data`` (see :meth:`encode_counted`)."""
        return self.encode_counted(data)[0]

    def encode_prompt(self, text: str) -> tuple[np.ndarray, list[str]]:
        """A prompt as ids ``[P]`` int64: its words, with ``<eos>`` for each
        newline only (an unfinished last line continues when sampling), and
        the words that are not in the vocabulary (read as ``<unk>``)."""
        ids: list[int] = []
        unknown: list[str] = []
        for line in io.StringIO(text, newline=None):
            for word in line.split():
                i = self.index.get(word)
                if i is None:
                    unknown.append(word)
                    i = self.unk_id
                ids.append(i)
            if line.endswith("\n"):
                ids.append(self.eos_id)
        return np.asarray(ids, dtype=np.int64), unknown

    # ------------------------------------------------------------ decoding
    def text(self, ids: Sequence[int] | np.ndarray, after_word: bool = False) -> str:
        """The text of ids ``[L]``: words of a line joined by single spaces,
        ``<eos>`` as a newline. ``after_word``: the text continues a line that
        already holds a word (streamed decoding), so a word starts with a space."""
        pieces = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == self.eos_id:
                pieces.append("\n")
                after_word = False
            else:
                pieces.append(f" {self.words[i]}" if after_word else self.words[i])
                after_word = True
        return "".join(pieces)

    def token_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The UTF-8 text of ids ``[L]`` (see :meth:`text`)."""
        return self.text(ids).encode("utf-8")

    def ends_in_word(self, ids: Sequence[int] | np.ndarray, after_word: bool) -> bool:
        """Whether the line is left holding a word after ``ids`` ``[L]``."""
        flat = np.asarray(ids).reshape(-1)
        return after_word if flat.size == 0 else int(flat[-1]) != self.eos_id

    # ------------------------------------------------------- serialization
    def to_bytes(self) -> bytes:
        """The words in id order, one per line, UTF-8."""
        if self._bytes is None:
            self._bytes = "".join(w + "\n" for w in self.words).encode("utf-8")
        return self._bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> "WordVocabulary":
        """Inverse of :meth:`to_bytes`; ValueError when it is not one."""
        text = data.decode("utf-8")
        if not text.endswith("\n"):
            raise ValueError("a serialized word vocabulary ends with a newline")
        return cls(text[:-1].split("\n"))

    @property
    def sha256(self) -> str:
        """Identity of the vocabulary: sha256 of :meth:`to_bytes`."""
        return hashlib.sha256(self.to_bytes()).hexdigest()


def save_vocabulary(vocab: WordVocabulary, cache_dir: Path) -> Path:
    """Write ``vocab`` to ``<cache_dir>/text/vocabularies/<sha256>.txt``
    (atomically; an existing file of that name already holds it)."""
    path = Path(cache_dir) / "text" / "vocabularies" / f"{vocab.sha256[:16]}.txt"
    if not path.is_file():
        make_dirs(path.parent)
        write_bytes(path, vocab.to_bytes(), intact="the token store was not written")
    return path


def load_vocabulary(path: Path, sha256: str) -> WordVocabulary | None:
    """The vocabulary cached at ``path`` if it is there and is ``sha256``; else None."""
    try:
        vocab = WordVocabulary.from_bytes(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return vocab if vocab.sha256 == sha256 else None
