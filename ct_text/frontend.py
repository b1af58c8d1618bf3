"""The text front end: enwik8 bytes, PG-19 subwords, generic text files.

Implements :class:`ct_core.data.frontend.FrontEnd` for text. ``prepare`` reads the
corpus (:mod:`ct_text.enwik8`, :mod:`ct_text.pg19`, :mod:`ct_text.text_files`),
tokenizes it (:mod:`ct_text.tokenizer`) and writes a token store at
``<cache_dir>/text/<hash>/``, the hash covering the settings and the source
files' paths, sizes and mtimes, so an unchanged corpus is a cache hit that
reads no text. The manifest records, per split and per document, the
documents, tokens, bytes and whitespace-separated words that the metrics
(:mod:`ct_text.text_metrics`) divide by.

Example::

    fe = TextFrontEnd(TextConfig(corpus="file", path="tinyshakespeare.txt"))
    fe.prepare()
    fe.documents("valid")[0][:5]          # memmap of byte ids
    fe.metrics(nll_sum=1e5, n_tokens=111_539, split="valid")["bpc"]
"""

from __future__ import annotations

import argparse
import codecs
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from ct_core.errors import ConfigError, DataError
from ct_core.data.frontend import SPLITS, FrontEnd
from ct_core.data.token_store import TokenStore, TokenStoreWriter, content_hash, default_cache_dir, token_dtype
from ct_text.corpus import Corpus, check_split, count_words, decode_text, read_text_file
from ct_text.enwik8 import enwik8_corpus, resolve_enwik8
from ct_text.pg19 import pg19_corpus
from ct_text.text_files import check_fractions, text_file_corpus
from ct_text.text_metrics import text_metrics
from ct_text.tokenizer import (
    SENTENCEPIECE_TYPES, ByteTokenizer, SentencePieceTokenizer, Tokenizer,
    load_or_train_sentencepiece, tokenizer_from_state, tokenizer_state,
)

log = logging.getLogger(__name__)

#: corpus -> its tokenizer when ``data.tokenizer`` is not set.
DEFAULT_TOKENIZERS = {"enwik8": "bytes", "pg19": "sentencepiece", "file": "bytes"}
TOKENIZERS = ("bytes", "sentencepiece")
#: Bumped when the store's content or manifest changes, so old stores are not reused.
STORE_FORMAT = 1


@dataclass
class TextConfig:
    """Options of the text front end (the ``data`` section of a text recipe).

    ``path``: enwik8's zip or raw file (or a folder holding it); for
    ``corpus=file`` a text file or a folder of text files. ``root``: the
    PG-19 folder. ``tokenizer=None`` means the corpus's default (bytes for
    enwik8 and files, SentencePiece for PG-19). ``vocab_size``,
    ``sentencepiece_type`` and ``tokenizer_sample_bytes`` (train on a
    deterministic sample of about that many train bytes) only concern
    SentencePiece. ``valid_fraction`` / ``test_fraction`` only concern
    ``corpus=file``. ``cache_dir=None`` is ``ct_core.data.token_store.default_cache_dir()``.
    """

    corpus: str = "enwik8"
    path: str | None = None
    root: str | None = None
    tokenizer: str | None = None
    vocab_size: int = 32000
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

    def validate(self) -> "TextConfig":
        """Raise a one-line ConfigError for the first invalid option."""
        if self.corpus not in DEFAULT_TOKENIZERS:
            raise ConfigError(f"data.corpus={self.corpus!r} is unknown; choose one of {sorted(DEFAULT_TOKENIZERS)}")
        if self.tokenizer is not None and self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"data.tokenizer={self.tokenizer!r} is unknown; choose one of {list(TOKENIZERS)} or null")
        if self.sentencepiece_type not in SENTENCEPIECE_TYPES:
            raise ConfigError(
                f"data.sentencepiece_type={self.sentencepiece_type!r} is unknown; choose one of {list(SENTENCEPIECE_TYPES)}"
            )
        # 256 byte pieces + <unk> are always in the vocabulary (byte fallback).
        if not isinstance(self.vocab_size, int) or self.vocab_size <= 257:
            raise ConfigError(f"data.vocab_size={self.vocab_size!r} must be an integer > 257 (256 byte pieces + <unk>)")
        if self.tokenizer_sample_bytes is not None and (
            not isinstance(self.tokenizer_sample_bytes, int) or self.tokenizer_sample_bytes <= 0
        ):
            raise ConfigError(f"data.tokenizer_sample_bytes={self.tokenizer_sample_bytes!r} must be a positive integer or null")
        check_fractions(self.valid_fraction, self.test_fraction)
        return self


class TextFrontEnd(FrontEnd):
    """Text as token ids: bytes (vocabulary 256) or SentencePiece subwords."""

    name = "text"
    Config = TextConfig

    def __init__(self, cfg: TextConfig, state: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg, state)
        cfg.validate()
        # A checkpoint's tokenizer wins over the config: the model was trained on its ids.
        self._tokenizer: Tokenizer | None = tokenizer_from_state(state) if state else None
        if self._tokenizer is None and cfg.tokenizer_kind == "bytes":
            self._tokenizer = ByteTokenizer()
        self._kind = self._tokenizer.kind if self._tokenizer else cfg.tokenizer_kind
        self._store: TokenStore | None = None
        # Bytes of a character split across streamed tokens wait here for the rest.
        self._stream = codecs.getincrementaldecoder("utf-8")(errors="replace")

    # ------------------------------------------------------------------ data
    @property
    def cache_dir(self) -> Path:
        return Path(self.cfg.cache_dir).expanduser() if self.cfg.cache_dir else default_cache_dir()

    @property
    def vocab_size(self) -> int:
        return self._require_tokenizer().vocab_size

    def _require_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self.prepare()  # a SentencePiece model comes from the corpus (or the cache)
        assert self._tokenizer is not None
        return self._tokenizer

    def _corpus(self, progress: bool) -> Corpus:
        cfg = self.cfg
        if cfg.corpus == "enwik8":
            path = resolve_enwik8(cfg.path, cfg.download, self.cache_dir, progress)
            return enwik8_corpus(path, cfg.accept_md5_mismatch)
        if cfg.corpus == "pg19":
            if cfg.root is None:
                raise ConfigError("data.root is not set; set data.root=/path/to/pg19 (holding train/, validation/, test/, metadata.csv)")
            return pg19_corpus(Path(cfg.root))
        if cfg.path is None:
            raise ConfigError("data.path is not set; set data.path=/path/to/text.txt (a text file or a folder of them)")
        return text_file_corpus(Path(cfg.path), cfg.valid_fraction, cfg.test_fraction)

    def _settings(self, corpus: Corpus) -> dict[str, Any]:
        """Everything the store's content depends on (hashed into its folder name)."""
        cfg = self.cfg
        settings: dict[str, Any] = {
            "format": STORE_FORMAT, "corpus": cfg.corpus, "tokenizer": self._kind, "listing": corpus.listing(),
        }
        if self._kind == "sentencepiece":
            settings.update(vocab_size=cfg.vocab_size, sentencepiece_type=cfg.sentencepiece_type,
                            tokenizer_sample_bytes=cfg.tokenizer_sample_bytes)
        if cfg.corpus == "file":
            settings.update(valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction)
        return settings

    def prepare(self, progress: bool = True) -> None:
        corpus = self._corpus(progress)
        settings = self._settings(corpus)
        path = self.cache_dir / "text" / content_hash(settings)
        if isinstance(self._tokenizer, SentencePieceTokenizer) and not self._store_uses(path, self._tokenizer):
            # A checkpoint's tokenizer differs from the one these settings
            # train today (the corpus changed): its ids need their own store.
            path = self.cache_dir / "text" / content_hash({**settings, "tokenizer_sha256": self._tokenizer.sha256})
        if TokenStore.exists(path) and self._adopt(TokenStore(path)):
            log.info("prepared text found in cache: %s", path)
            return
        model_file = None
        if self._tokenizer is None:
            self._tokenizer, model_path = load_or_train_sentencepiece(
                corpus.split("train"), self.cfg.vocab_size, self.cfg.sentencepiece_type,
                self.cfg.tokenizer_sample_bytes, self.cache_dir,
            )
            model_file = model_path.name
        self._store = TokenStore(self._write_store(path, corpus, self._tokenizer, model_file, progress))

    @staticmethod
    def _store_uses(path: Path, tokenizer: SentencePieceTokenizer) -> bool:
        return TokenStore.exists(path) and TokenStore(path).manifest["tokenizer"].get("sha256") == tokenizer.sha256

    def _adopt(self, store: TokenStore) -> bool:
        """Use a cached store; load its SentencePiece model unless one is
        loaded. False when that model file is gone (then prepare again)."""
        if self._tokenizer is None:
            info = store.manifest["tokenizer"]
            model = self.cache_dir / "text" / "tokenizers" / str(info["model"])
            if not info["model"] or not model.is_file():
                return False
            tokenizer = SentencePieceTokenizer(model.read_bytes())
            if tokenizer.sha256 != info["sha256"]:
                return False
            self._tokenizer = tokenizer
        self._store = store
        return True

    def _write_store(
        self, path: Path, corpus: Corpus, tokenizer: Tokenizer, model_file: str | None, progress: bool
    ) -> Path:
        """Tokenize every document and write the store; ``model_file`` names
        the cached SentencePiece model it used (None: bytes, or a checkpoint's)."""
        records: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
        skipped = []
        total = sum(doc.size for doc in corpus.documents)
        with TokenStoreWriter(path, token_dtype(tokenizer.vocab_size)) as writer, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"tokenizing {corpus.name}", disable=not progress
        ) as bar:
            for doc in corpus.documents:
                data = doc.read()
                bar.update(doc.size)
                if not data:
                    skipped.append({"split": doc.split, "name": doc.name, "reason": "empty"})
                    continue
                ids = tokenizer.encode(data)  # [L]
                writer.add(doc.split, ids)
                records[doc.split].append({
                    "name": doc.name, **doc.meta, "bytes": len(data),
                    "words": count_words(decode_text(data)), "tokens": int(ids.size),
                })
            counts = {
                split: {"documents": len(rows), **{k: sum(r[k] for r in rows) for k in ("tokens", "bytes", "words")}}
                for split, rows in records.items()
            }
            manifest = {
                "frontend": self.name, "format": STORE_FORMAT, "corpus": corpus.name, "source": str(corpus.root),
                "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                              "sha256": getattr(tokenizer, "sha256", None), "model": model_file},
                "counts": counts, "documents": records, "skipped": skipped,
            }
            return writer.finish(manifest, splits=SPLITS)

    def documents(self, split: str) -> Sequence[np.ndarray]:
        check_split(split)
        if self._store is None:
            self.prepare()
        assert self._store is not None
        return self._store.documents(split)

    def counts(self, split: str) -> dict[str, int]:
        """Documents, tokens, bytes and words of ``split`` (from the manifest)."""
        check_split(split)
        if self._store is None:
            self.prepare(progress=False)
        assert self._store is not None
        return dict(self._store.manifest["counts"].get(split, {}))

    def metrics(self, nll_sum: float, n_tokens: int, split: str, complete: bool = True) -> dict[str, float]:
        counts = self.counts(split) if complete else {}
        return text_metrics(nll_sum, n_tokens, bytes_tokenizer=self._kind == "bytes",
                            n_bytes=counts.get("bytes"), n_words=counts.get("words"),
                            n_split_tokens=counts.get("tokens"))

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return tokenizer_state(self._require_tokenizer())

    # -------------------------------------------------------------- sampling
    @classmethod
    def add_sample_arguments(cls, parser: argparse.ArgumentParser) -> None:
        prompt = parser.add_mutually_exclusive_group()
        prompt.add_argument("--prompt", default=None, help="text the samples continue")
        prompt.add_argument("--prompt-file", default=None, help="file whose text the samples continue")
        parser.add_argument("--tokens", type=int, default=400, help="tokens to generate after the prompt (default 400)")

    def encode_prompt(self, args: argparse.Namespace) -> np.ndarray:
        """The prompt as ids ``[P]`` int64. Also starts a new streamed text."""
        self._stream.reset()
        prompt_file = getattr(args, "prompt_file", None)
        if prompt_file:
            if not Path(prompt_file).is_file():
                raise DataError(f"--prompt-file {prompt_file}: no such file; give an existing text file or use --prompt")
            data = read_text_file(Path(prompt_file))
        else:
            data = (getattr(args, "prompt", None) or "").encode("utf-8")
        return np.asarray(self._require_tokenizer().encode(data), dtype=np.int64)

    def start_token(self) -> int:
        """A newline (the byte 10; SentencePiece's byte piece ``<0x0A>``):
        unprompted text starts as if at the beginning of a line."""
        return int(self._require_tokenizer().encode(b"\n")[0])

    def num_new_tokens(self, args: argparse.Namespace) -> int:
        if args.tokens < 0:
            raise ConfigError(f"--tokens {args.tokens}: must be >= 0")
        return int(args.tokens)

    def decode(self, tokens: np.ndarray, out: Path, prompt_len: int) -> list[Path]:
        """Write each stream of ``tokens`` ``[B, P + N]``, prompt included, as
        the raw bytes it decodes to: to ``out`` itself for one stream and a
        file name with a suffix (``story.txt``), else into folder ``out``
        (``x.txt`` with several streams becomes folder ``x``) as
        ``sample_000.txt``, ``sample_001.txt``, ..."""
        tokens = np.asarray(tokens)
        tokens = tokens.reshape(1, -1) if tokens.ndim == 1 else tokens  # [B, T]
        out = Path(out)
        if tokens.shape[0] == 1 and out.suffix:
            paths = [out]
        else:
            folder = out.with_suffix("")
            paths = [folder / f"sample_{i:03d}.txt" for i in range(tokens.shape[0])]
        tokenizer = self._require_tokenizer()
        for path, row in zip(paths, tokens):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tokenizer.token_bytes(row))
        return paths

    def stream_text(self, new_tokens: np.ndarray) -> str | None:
        """Text of ``new_tokens`` ``[k]``; a character whose bytes are split
        across calls is printed once, when its last byte arrives."""
        return self._stream.decode(self._require_tokenizer().token_bytes(new_tokens))

    def log_samples(self, writer: Any, tokens: np.ndarray, step: int) -> None:
        """The first stream of ``tokens`` ``[B, T]`` as TensorBoard text."""
        text = decode_text(self._require_tokenizer().token_bytes(np.asarray(tokens)[0]))
        # TensorBoard renders markdown; a 4-space indent keeps line breaks and markup as written.
        writer.add_text("samples/text", "    " + text.replace("\n", "\n    "), step)
