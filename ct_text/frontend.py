"""The text front end: enwik8 bytes, PG-19 subwords, generic text files.

Implements :class:`ct_core.data.frontend.FrontEnd` for text. ``prepare``
reads the corpus (:mod:`ct_text.enwik8`, :mod:`ct_text.pg19`,
:mod:`ct_text.text_files`), tokenizes it (:mod:`ct_text.tokenizer`) and
writes a token store (:mod:`ct_text.store`); options are in
:mod:`ct_text.config`.

Example::

    fe = TextFrontEnd(TextConfig(corpus="file", path="tinyshakespeare.txt"))
    fe.prepare()
    fe.documents("valid")[0][:5]          # memmap of byte ids
    fe.metrics(nll_sum=1e5, n_tokens=111_539, split="valid")["bpc"]
"""

from __future__ import annotations

import codecs
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ct_core.data.frontend import FrontEnd, SampleMedia, check_split
from ct_core.data.token_store import TokenStore, content_hash, store_lock
from ct_core.errors import ConfigError, DataError
from ct_text.config import TextConfig, TextSampleRequest
from ct_text.corpus import Corpus, decode_text, read_text_file
from ct_text.enwik8 import enwik8_corpus, resolve_enwik8
from ct_text.pg19 import pg19_corpus
from ct_text.store import store_settings, write_store
from ct_text.text_files import text_file_corpus
from ct_text.text_metrics import text_metrics
from ct_text.tokenizer import (
    ByteTokenizer, SentencePieceTokenizer, Tokenizer, load_or_train_sentencepiece, tokenizer_from_state,
    tokenizer_state,
)

log = logging.getLogger(__name__)


class TextFrontEnd(FrontEnd):
    """Text as token ids: bytes (vocabulary 256) or SentencePiece subwords."""

    name = "text"
    Config = TextConfig
    SampleRequest = TextSampleRequest

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
        return self.cfg.cache_root

    @property
    def vocab_size(self) -> int:
        """Known without reading the corpus: the loaded tokenizer's, else 256
        for bytes or ``data.vocab_size`` (SentencePiece trains exactly that many)."""
        if self._tokenizer is not None:
            return self._tokenizer.vocab_size
        return self.cfg.vocab_size

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

    def prepare(self, progress: bool = True) -> None:
        corpus = self._corpus(progress)
        settings = store_settings(self.cfg, self._kind, corpus)
        path = self.cache_dir / "text" / content_hash(settings)
        if isinstance(self._tokenizer, SentencePieceTokenizer) and not self._store_uses(path, self._tokenizer):
            # A checkpoint's tokenizer differs from the one these settings
            # train today (the corpus changed): its ids need their own store.
            path = self.cache_dir / "text" / content_hash({**settings, "tokenizer_sha256": self._tokenizer.sha256})
        with store_lock(path):  # another process may be preparing the same store
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
            self._store = TokenStore(write_store(path, corpus, self._tokenizer, model_file, progress))

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

    @property
    def store_path(self) -> Path | None:
        return None if self._store is None else self._store.path

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
    def encode_prompt(self, request: TextSampleRequest) -> np.ndarray:
        """The prompt as ids ``[P]`` int64. Also starts a new streamed text."""
        self._stream.reset()
        if request.prompt_file:
            if Path(request.prompt_file).is_dir():
                raise DataError(f"--prompt-file {request.prompt_file} is a folder; give a text file")
            if not Path(request.prompt_file).is_file():
                raise DataError(
                    f"--prompt-file {request.prompt_file}: no such file; give an existing text file or use --prompt"
                )
            data = read_text_file(Path(request.prompt_file))
        else:
            data = (request.prompt or "").encode("utf-8")
        return np.asarray(self._require_tokenizer().encode(data), dtype=np.int64)

    def start_token(self) -> int:
        """A newline (the byte 10; SentencePiece's byte piece ``<0x0A>``):
        unprompted text starts as if at the beginning of a line."""
        return int(self._require_tokenizer().encode(b"\n")[0])

    def num_new_tokens(self, request: TextSampleRequest) -> int:
        return request.tokens

    def decode(self, tokens: np.ndarray, out: Path, prompt_len: int) -> list[Path]:
        """Write each stream of ``tokens`` ``[B, P + N]``, prompt included, as
        the raw bytes it decodes to: to ``out`` itself for one stream and a
        file name with a suffix (``story.txt``), else into folder ``out``
        (``x.txt`` with several streams becomes folder ``x``) as
        ``sample_000.txt``, ``sample_001.txt``, ..."""
        tokens = np.asarray(tokens)
        tokens = tokens.reshape(1, -1) if tokens.ndim == 1 else tokens  # [B, T]
        paths = self.sample_paths(out, tokens.shape[0])
        tokenizer = self._require_tokenizer()
        for path, row in zip(paths, tokens):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tokenizer.token_bytes(row))
        return paths

    def stream_text(self, new_tokens: np.ndarray) -> str | None:
        """Text of ``new_tokens`` ``[k]``; a character whose bytes are split
        across calls is printed once, when its last byte arrives."""
        return self._stream.decode(self._require_tokenizer().token_bytes(new_tokens))

    def render_samples(self, tokens: np.ndarray, step: int) -> SampleMedia:
        """The first stream of ``tokens`` ``[B, T]`` as TensorBoard text."""
        text = decode_text(self._require_tokenizer().token_bytes(np.asarray(tokens)[0]))
        # TensorBoard renders markdown; a 4-space indent keeps line breaks and markup as written.
        return SampleMedia(texts={"samples/text": "    " + text.replace("\n", "\n    ")})
