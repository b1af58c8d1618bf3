"""Options of the text front end: the ``data`` section of a text recipe
(:class:`TextConfig`) and the options of ``ct-sample`` (:class:`TextSampleRequest`).

Every key of the recipe's ``data`` mapping except ``frontend`` is a field of
:class:`TextConfig`; values are checked when the config is built, so a bad
option fails before any text is read.

Example::

    cfg = TextConfig(corpus="pg19", root="/data/pg19", vocab_size=32000)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, ClassVar

from ct_core.data.frontend import SampleRequest
from ct_core.data.token_store import default_cache_dir
from ct_core.errors import ConfigError
from ct_core.options import section_key
from ct_text.tokenizer import SENTENCEPIECE_TYPES

#: corpus -> its tokenizer when ``data.tokenizer`` is not set.
DEFAULT_TOKENIZERS = {"enwik8": "bytes", "pg19": "sentencepiece", "file": "bytes", "wikitext103": "words",
                      "wikitext2": "words"}
TOKENIZERS = ("bytes", "sentencepiece", "words")
#: Corpora read from ``data.root`` (the others from ``data.path``).
ROOT_CORPORA = ("pg19", "wikitext103", "wikitext2")
DEFAULT_VOCAB_SIZE = 32000
#: Largest vocabulary: beyond it the embedding and softmax outgrow any GPU
#: long before the tokenizer is any better (WikiText-103 has 267,735 words).
MAX_VOCAB_SIZE = 2**20


@dataclasses.dataclass
class TextConfig:
    """Settings of corpus reading, tokenization, splits and caching.

    ``path``: enwik8's zip or raw file (or a folder holding it); for
    ``corpus=file`` a text file or a folder of text files. ``root``: the
    PG-19 folder; WikiText's zip or the folder holding its ``.tokens`` files.
    ``tokenizer=None`` means the corpus's default (bytes for enwik8 and
    files, SentencePiece for PG-19, words for WikiText). ``vocab_size``:
    exactly the number of SentencePiece pieces trained; for words, the
    number of ids the training split gives (checked when the vocabulary is
    built, so the model's size is known before the corpus is read).
    ``sentencepiece_type`` and ``tokenizer_sample_bytes`` (train on a
    deterministic sample of about that many train bytes) only concern
    SentencePiece. ``valid_fraction`` / ``test_fraction`` only concern
    ``corpus=file``. ``accept_md5_mismatch`` concerns enwik8 and
    WikiText-103's zip. ``cache_dir=None`` is
    ``ct_core.data.token_store.default_cache_dir()``.

    ``same_data_fields`` are the options that leave the data unchanged
    (where the corpus and the cache live, how a missing enwik8 is found or
    checked): the only ``data`` options ``ct-eval`` and a resumed run may
    change.
    """

    same_data_fields: ClassVar[tuple[str, ...]] = ("path", "root", "cache_dir", "download", "accept_md5_mismatch")

    corpus: str = "enwik8"
    path: str | None = None
    root: str | None = None
    tokenizer: str | None = None
    vocab_size: int = DEFAULT_VOCAB_SIZE
    sentencepiece_type: str = "unigram"
    tokenizer_sample_bytes: int | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.0
    accept_md5_mismatch: bool = False
    download: bool = False
    cache_dir: str | None = None

    @property
    def tokenizer_kind(self) -> str:
        return self.tokenizer or DEFAULT_TOKENIZERS[self.corpus]

    @property
    def cache_root(self) -> Path:
        """Folder holding prepared data (this front end's stores go under ``text/``)."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def validate(self, key: Callable[[str], str] = section_key("data")) -> "TextConfig":
        """Raise a one-line ConfigError for the first invalid option."""
        if self.corpus not in DEFAULT_TOKENIZERS:
            raise ConfigError(f"{key('corpus')}={self.corpus!r} is unknown; choose one of {sorted(DEFAULT_TOKENIZERS)}")
        if self.tokenizer is not None and self.tokenizer not in TOKENIZERS:
            raise ConfigError(
                f"{key('tokenizer')}={self.tokenizer!r} is unknown; choose one of {list(TOKENIZERS)} or null"
            )
        if self.sentencepiece_type not in SENTENCEPIECE_TYPES:
            raise ConfigError(
                f"{key('sentencepiece_type')}={self.sentencepiece_type!r} is unknown; "
                f"choose one of {list(SENTENCEPIECE_TYPES)}"
            )
        if self.tokenizer_kind == "words":
            # <eos> and <unk> are always in a word vocabulary.
            if not isinstance(self.vocab_size, int) or not 2 <= self.vocab_size <= MAX_VOCAB_SIZE:
                raise ConfigError(f"{key('vocab_size')}={self.vocab_size!r} must be an integer in "
                                  f"2..{MAX_VOCAB_SIZE:,} (<eos> and <unk> at least)")
        elif not isinstance(self.vocab_size, int) or not 257 < self.vocab_size <= MAX_VOCAB_SIZE:
            # 256 byte pieces + <unk> are always in the vocabulary (byte fallback).
            raise ConfigError(
                f"{key('vocab_size')}={self.vocab_size!r} must be an integer in 258..{MAX_VOCAB_SIZE:,} "
                "(256 byte pieces + <unk> and at least one more; the paper's PG-19 uses 32000)"
            )
        if self.tokenizer_kind == "bytes" and self.vocab_size != DEFAULT_VOCAB_SIZE:
            raise ConfigError(
                f"{key('vocab_size')}={self.vocab_size} has no effect with {key('tokenizer')}=bytes (256 byte "
                f"values); set {key('tokenizer')}=sentencepiece for subwords, or leave {key('vocab_size')} out"
            )
        if self.tokenizer_sample_bytes is not None and (
            not isinstance(self.tokenizer_sample_bytes, int) or self.tokenizer_sample_bytes <= 0
        ):
            raise ConfigError(
                f"{key('tokenizer_sample_bytes')}={self.tokenizer_sample_bytes!r} must be a positive integer or null"
            )
        for name in ("valid_fraction", "test_fraction"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ConfigError(f"{key(name)}={getattr(self, name)!r} must lie in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"{key('valid_fraction')} + {key('test_fraction')} = {self.valid_fraction + self.test_fraction} "
                "must be < 1 so that some text is left for training"
            )
        return self


@dataclasses.dataclass
class TextSampleRequest(SampleRequest):
    """``ct-sample`` options of a text checkpoint."""

    prompt: str | None = dataclasses.field(
        default=None, metadata={"help": "text the samples continue (word models: unknown words become <unk>)"})
    prompt_file: str | None = dataclasses.field(
        default=None, metadata={"help": "file whose text the samples continue", "metavar": "FILE"})
    tokens: int = dataclasses.field(default=400, metadata={"help": "tokens to generate after the prompt (default 400)"})

    def validate(self) -> None:
        if self.prompt is not None and self.prompt_file is not None:
            raise ConfigError("--prompt and --prompt-file exclude each other; give one of them")
        if self.tokens < 0:
            raise ConfigError(f"--tokens {self.tokens}: must be >= 0")
