"""Tokenizers of the text front end: raw bytes, SentencePiece subwords, or words.

* :class:`ByteTokenizer`: one token per byte, vocabulary 256 (enwik8, text
  files). Needs no decoding, so any byte sequence round-trips exactly.
* :class:`SentencePieceTokenizer`: subwords (PG-19; the paper used
  tensor2tensor's SubwordTextEncoder, see the README's deviations). Trained by
  :func:`load_or_train_sentencepiece` on the train split, or on a
  deterministic byte-capped sample of it, and cached under
  ``<cache_dir>/text/tokenizers/<hash>.model`` where the hash covers the
  training text and every training option, so a second run loads the model
  instead of training again.
* :class:`~ct_text.vocabulary.WordVocabulary`: whitespace-separated words
  and ``<eos>`` (WikiText-103), built as Transformer-XL builds it.

SentencePiece settings, and why:

* ``normalization_rule_name=identity``, ``remove_extra_whitespaces=False``,
  ``add_dummy_prefix=False``: the text is modelled as it is, so decoding the
  ids gives back the input (no NFKC, no collapsed spaces, no invented space).
* ``byte_fallback=True``: a character outside the vocabulary becomes its
  UTF-8 bytes, so nothing is ever ``<unk>``. Newlines are never seen in
  training (it trains on lines) and are always the byte piece ``<0x0A>``;
  ``\\r`` of CRLF text is a character like any other.
* ``hard_vocab_limit=True``: exactly ``vocab_size`` pieces or a one-line
  error, so the model's vocabulary is known before any training text is read.
* ``num_threads=1``, all sentences, no shuffling, a fixed random seed: the
  same text gives the same model bytes on every machine with the same
  SentencePiece version (which is part of the cache hash).
* Text is decoded with ``errors="replace"`` before encoding, so invalid
  UTF-8 is encoded as U+FFFD (the only case where ids do not give back the
  exact input bytes; a literal U+2581 ``▁`` in the input also decodes as a space).

Example::

    tok = ByteTokenizer()
    tok.token_bytes(tok.encode(b"caf\\xc3\\xa9"))      # b"caf\\xc3\\xa9"
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import sentencepiece as spm
import torch

from ct_core.atomic_write import write_bytes
from ct_core.errors import CheckpointError, ConfigError
from ct_core.data.token_store import content_hash
from ct_text.corpus import TextDocument, decode_text
from ct_text.vocabulary import WordVocabulary

log = logging.getLogger(__name__)

SENTENCEPIECE_TYPES = ("unigram", "bpe")
#: Seed of SentencePiece's random generator (used by the unigram trainer).
SEED = 0
#: Every option passed to the trainer besides the text, vocab size and type;
#: part of the cache hash, so changing one retrains.
TRAINER_OPTIONS = dict(
    byte_fallback=True,
    character_coverage=0.9995,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    unk_id=0,
    bos_id=-1,
    eos_id=-1,
    pad_id=-1,
    num_threads=1,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    hard_vocab_limit=True,
    max_sentence_length=16384,
    minloglevel=2,
)


class ByteTokenizer:
    """One token per byte: ids are the byte values, vocabulary 256."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, data: bytes) -> np.ndarray:
        """``data`` as ids ``[len(data)]`` uint8."""
        return np.frombuffer(data, dtype=np.uint8)

    def token_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The bytes of ids ``[L]``."""
        return np.asarray(ids).astype(np.uint8).tobytes()


class SentencePieceTokenizer:
    """A trained SentencePiece model, built from its serialized proto."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.vocab_size: int = self._sp.get_piece_size()
        # Bytes of every piece, so that decoding a batch or a streamed token is
        # a table lookup and byte pieces of one character can be joined first.
        self._piece_bytes = [self._bytes_of(i) for i in range(self.vocab_size)]

    def _bytes_of(self, i: int) -> bytes:
        if self._sp.is_byte(i):
            return bytes([int(self._sp.id_to_piece(i)[3:5], 16)])  # "<0xAB>"
        if self._sp.is_control(i) or self._sp.is_unknown(i):
            return b""
        return self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8")

    @property
    def sha256(self) -> str:
        """Identity of the model: sha256 of its proto."""
        return hashlib.sha256(self.model_proto).hexdigest()

    def encode(self, data: bytes) -> np.ndarray:
        """``data`` as ids ``[L]`` int64, line by line (lines encode in parallel;
        a newline ends its line, so the concatenation decodes to the whole text)."""
        lines = decode_text(data).split("\n")
        chunks = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        ids = self._sp.encode(chunks, out_type=int, num_threads=min(os.cpu_count() or 1, 16))
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=sum(map(len, ids)))

    def token_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The bytes of ids ``[L]``; byte pieces are joined before any decoding."""
        return b"".join(self._piece_bytes[int(i)] for i in np.asarray(ids).reshape(-1))


def training_sample(documents: Sequence[TextDocument], max_bytes: int | None) -> bytes:
    """The text a tokenizer trains on: all of ``documents`` or, with
    ``max_bytes``, a deterministic sample of about that size.

    Each document gives a share of the budget proportional to its size, taken
    from its middle (book starts are front matter), cut to whole lines.
    Documents are joined by newlines.
    """
    total = sum(d.size for d in documents)
    pieces = []
    for doc in documents:
        data = doc.read()
        if max_bytes is not None and max_bytes < total:
            budget = max_bytes * doc.size // max(total, 1)
            start = (len(data) - budget) // 2
            stop = start + budget
            chunk = data[start:stop]
            if start > 0 and b"\n" in chunk:
                chunk = chunk[chunk.index(b"\n") + 1:]
            if stop < len(data) and b"\n" in chunk:
                chunk = chunk[:chunk.rindex(b"\n") + 1]
            data = chunk
        if data:
            pieces.append(data)
    return b"\n".join(pieces)


def train_sentencepiece(text: bytes, vocab_size: int, model_type: str) -> bytes:
    """Train a SentencePiece model on ``text`` (line by line); returns its proto."""
    lines = [line for line in decode_text(text).split("\n") if line]
    if not lines:
        raise ConfigError("data.tokenizer=sentencepiece: the train split has no text to train on")
    spm.set_random_generator_seed(SEED)
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=proto,
            vocab_size=vocab_size, model_type=model_type, **TRAINER_OPTIONS,
        )
    except RuntimeError as e:
        # SentencePiece prefixes its reason with the failed C++ check: keep the reason only.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1].split("] ", 1)[-1]
        raise ConfigError(
            f"data.vocab_size={vocab_size}: SentencePiece could not train ({reason}); "
            "choose another data.vocab_size or give it more text (data.tokenizer_sample_bytes)"
        ) from None
    return proto.getvalue()


def load_or_train_sentencepiece(
    documents: Sequence[TextDocument],
    vocab_size: int,
    model_type: str,
    max_bytes: int | None,
    cache_dir: Path,
) -> tuple[SentencePieceTokenizer, Path]:
    """The SentencePiece model for these train ``documents`` and settings:
    loaded from ``<cache_dir>/text/tokenizers/<hash>.model`` when it exists,
    else trained and saved there (atomically). Returns it and its file."""
    if model_type not in SENTENCEPIECE_TYPES:
        raise ConfigError(f"data.sentencepiece_type={model_type!r} is unknown; choose one of {list(SENTENCEPIECE_TYPES)}")
    text = training_sample(documents, max_bytes)
    key = content_hash({
        "text_sha256": hashlib.sha256(text).hexdigest(),
        "vocab_size": vocab_size,
        "model_type": model_type,
        "seed": SEED,
        "options": TRAINER_OPTIONS,
        "sentencepiece": spm.__version__,
    })
    path = Path(cache_dir) / "text" / "tokenizers" / f"{key}.model"
    if path.is_file():
        log.info("SentencePiece model found in cache: %s", path)
        return SentencePieceTokenizer(path.read_bytes()), path
    log.info("training SentencePiece (%s, vocab %d) on %.1f MB of train text", model_type, vocab_size, len(text) / 1e6)
    proto = train_sentencepiece(text, vocab_size, model_type)
    write_bytes(path, proto, intact="no prepared data was left in the cache")
    return SentencePieceTokenizer(proto), path


Tokenizer = ByteTokenizer | SentencePieceTokenizer | WordVocabulary


def tokenizer_state(tokenizer: Tokenizer) -> dict[str, Any]:
    """What a checkpoint keeps of ``tokenizer``: its kind and, for
    SentencePiece, the model proto, for words the serialized vocabulary, as a
    ``torch.uint8`` tensor ``[n_bytes]`` (loadable with
    ``torch.load(weights_only=True)``)."""
    state: dict[str, Any] = {"tokenizer": tokenizer.kind}
    if isinstance(tokenizer, SentencePieceTokenizer):
        state["sentencepiece_model"] = torch.frombuffer(bytearray(tokenizer.model_proto), dtype=torch.uint8)
    if isinstance(tokenizer, WordVocabulary):
        state["vocabulary"] = torch.frombuffer(bytearray(tokenizer.to_bytes()), dtype=torch.uint8)
    return state


def tokenizer_from_state(state: Mapping[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer :func:`tokenizer_state` described, without corpus or cache."""
    kind = state.get("tokenizer")
    if kind == ByteTokenizer.kind:
        return ByteTokenizer()
    if kind == SentencePieceTokenizer.kind and "sentencepiece_model" in state:
        proto = state["sentencepiece_model"]
        if isinstance(proto, torch.Tensor):
            proto = proto.cpu().numpy().tobytes()
        return SentencePieceTokenizer(bytes(proto))
    if kind == WordVocabulary.kind and "vocabulary" in state:
        words = state["vocabulary"]
        if isinstance(words, torch.Tensor):
            words = words.cpu().numpy().tobytes()
        try:
            return WordVocabulary.from_bytes(bytes(words))
        except ValueError as e:
            raise CheckpointError(f"the checkpoint's word vocabulary is damaged ({e})") from None
    raise CheckpointError(
        f"the checkpoint's text front-end state names no usable tokenizer (tokenizer={kind!r}); "
        "was it written by this version of ct_text?"
    )
