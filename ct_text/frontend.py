"""The text front end: enwik8 bytes, PG-19 subwords, WikiText words, generic text files.

Implements :class:`ct_core.data.frontend.FrontEnd` for text. ``prepare``
reads the corpus (:mod:`ct_text.enwik8`, :mod:`ct_text.pg19`,
:mod:`ct_text.wikitext`, :mod:`ct_text.text_files`), tokenizes it
(:mod:`ct_text.tokenizer`, :mod:`ct_text.vocabulary`) and writes a token
store (:mod:`ct_text.store`); options are in :mod:`ct_text.config`.

Example::

    fe = TextFrontEnd(TextConfig(corpus="file", path="tinyshakespeare.txt"))
    fe.prepare()
    fe.documents("valid")[0][:5]          # memmap of byte ids
    fe.metrics(nll_sum=1e5, n_tokens=111_539, split="valid")["bpc"]
"""

from __future__ import annotations

import codecs
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ct_core.atomic_write import write_bytes, write_text
from ct_core.data.frontend import FrontEnd, SampleMedia, check_split
from ct_core.data.token_store import TokenStore, content_hash, store_lock
from ct_core.errors import ConfigError, DataError
from ct_text.config import TextConfig, TextSampleRequest
from ct_text.corpus import Corpus, decode_text, read_text_file
from ct_text.enwik8 import enwik8_corpus, resolve_enwik8
from ct_text.pg19 import pg19_corpus
from ct_text.store import store_settings, write_store
from ct_text.text_files import text_file_corpus
from ct_text.text_metrics import text_metrics, unigram_ppl, word_metrics
from ct_text.tokenizer import (
    ByteTokenizer, SentencePieceTokenizer, Tokenizer, load_or_train_sentencepiece, tokenizer_from_state,
    tokenizer_state,
)
from ct_text.vocabulary import UNK, WordVocabulary, load_vocabulary, save_vocabulary
from ct_text.wikitext import resolve_wikitext, wikitext_corpus

log = logging.getLogger(__name__)


#: Where a word store keeps its unigram baselines (computed on first use).
BASELINES = "baselines.json"
#: Unknown prompt words named in the notice, at most.
_SHOWN_UNKNOWN = 5


class TextFrontEnd(FrontEnd):
    """Text as token ids: bytes (vocabulary 256), SentencePiece subwords or words."""

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
        # Streamed words: whether the current line already holds a word (then a space comes first).
        self._after_word = False

    # ------------------------------------------------------------------ data
    @property
    def cache_dir(self) -> Path:
        return self.cfg.cache_root

    @property
    def vocab_size(self) -> int:
        """Known without reading the corpus: the loaded tokenizer's, else 256
        for bytes or ``data.vocab_size`` (SentencePiece trains exactly that
        many; a word vocabulary must have exactly that many ids)."""
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
        if cfg.corpus in ("wikitext103", "wikitext2"):
            if cfg.root is None:
                raise ConfigError(f"data.root is not set; set data.root=/path/to/{cfg.corpus.replace('wikitext', 'wikitext-')}"
                                  "-v1.zip (or the folder holding wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens)")
            return wikitext_corpus(resolve_wikitext(cfg.root, cfg.corpus), cfg.corpus, cfg.accept_md5_mismatch)
        if cfg.path is None:
            raise ConfigError("data.path is not set; set data.path=/path/to/text.txt (a text file or a folder of them)")
        return text_file_corpus(Path(cfg.path), cfg.valid_fraction, cfg.test_fraction)

    def prepare(self, progress: bool = True) -> None:
        corpus = self._corpus(progress)
        settings = store_settings(self.cfg, self._kind, corpus)
        path = self.cache_dir / "text" / content_hash(settings)
        if isinstance(self._tokenizer, (SentencePieceTokenizer, WordVocabulary)) and not self._store_uses(
                path, self._tokenizer):
            # A checkpoint's tokenizer differs from the one these settings
            # give today (the corpus changed): its ids need their own store.
            path = self.cache_dir / "text" / content_hash({**settings, "tokenizer_sha256": self._tokenizer.sha256})
        with store_lock(path):  # another process may be preparing the same store
            if TokenStore.exists(path) and self._adopt(TokenStore(path)):
                log.info("prepared text found in cache: %s", path)
                return
            model_file = None
            if self._tokenizer is None and self._kind == "words":
                self._tokenizer = self._build_vocabulary(corpus)
                model_file = save_vocabulary(self._tokenizer, self.cache_dir).name
            elif self._tokenizer is None:
                self._tokenizer, model_path = load_or_train_sentencepiece(
                    corpus.split("train"), self.cfg.vocab_size, self.cfg.sentencepiece_type,
                    self.cfg.tokenizer_sample_bytes, self.cache_dir,
                )
                model_file = model_path.name
            elif isinstance(self._tokenizer, WordVocabulary):
                model_file = save_vocabulary(self._tokenizer, self.cache_dir).name
            self._store = TokenStore(write_store(path, corpus, self._tokenizer, model_file, progress))
            unknown = {s: c.get("unknown", 0) for s, c in self._store.manifest["counts"].items()}
            if any(unknown.values()):
                log.warning("words not in the vocabulary, read as %s: %s", UNK,
                            ", ".join(f"{split} {n:,}" for split, n in unknown.items() if n))

    def _build_vocabulary(self, corpus: Corpus) -> WordVocabulary:
        """The training split's word vocabulary; its size must be ``data.vocab_size``."""
        log.info("counting the words of %s's training split", corpus.name)
        vocab = WordVocabulary.build(doc.read() for doc in corpus.split("train"))
        if vocab.vocab_size != self.cfg.vocab_size:
            raise ConfigError(
                f"data.vocab_size={self.cfg.vocab_size}: the training split of {corpus.root} gives "
                f"{vocab.vocab_size:,} ids (its words, <eos> and <unk>); set data.vocab_size={vocab.vocab_size}"
            )
        return vocab

    @staticmethod
    def _store_uses(path: Path, tokenizer: SentencePieceTokenizer | WordVocabulary) -> bool:
        return TokenStore.exists(path) and TokenStore(path).manifest["tokenizer"].get("sha256") == tokenizer.sha256

    def _adopt(self, store: TokenStore) -> bool:
        """Use a cached store; load its SentencePiece model or word vocabulary
        unless one is loaded. False when that file is gone (then prepare again)."""
        if self._tokenizer is None:
            info = store.manifest["tokenizer"]
            if not info["model"]:
                return False
            tokenizer: Tokenizer | None
            if self._kind == "words":
                tokenizer = load_vocabulary(self.cache_dir / "text" / "vocabularies" / str(info["model"]), info["sha256"])
            else:
                model = self.cache_dir / "text" / "tokenizers" / str(info["model"])
                tokenizer = SentencePieceTokenizer(model.read_bytes()) if model.is_file() else None
            if tokenizer is None or tokenizer.sha256 != info["sha256"]:
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
        if self._kind == "words":
            return word_metrics(nll_sum, n_tokens, self._unigram_ppl(split) if complete else None)
        counts = self.counts(split) if complete else {}
        return text_metrics(nll_sum, n_tokens, bytes_tokenizer=self._kind == "bytes",
                            n_bytes=counts.get("bytes"), n_words=counts.get("words"),
                            n_split_tokens=counts.get("tokens"))

    def _unigram_ppl(self, split: str) -> float:
        """The add-one unigram's perplexity on ``split``, computed once per
        store and kept in ``<store>/baselines.json``."""
        check_split(split)
        if self._store is None:
            self.prepare(progress=False)
        assert self._store is not None
        cache = self._store.path / BASELINES
        known = json.loads(cache.read_text()) if cache.is_file() else {}
        if split not in known:
            train = self._store.documents("train")
            known[split] = unigram_ppl(train, self._store.documents(split), self.vocab_size)
            # Atomic: a concurrent reader sees the old file or the new one.
            write_text(cache, json.dumps(known, indent=2), intact="the token store is unchanged")
        return float(known[split])

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
        tokenizer = self._require_tokenizer()
        if isinstance(tokenizer, WordVocabulary):
            self._after_word = False
            ids, unknown = tokenizer.encode_prompt(decode_text(data))
            if unknown:
                distinct = list(dict.fromkeys(unknown))
                shown = ", ".join(repr(w) for w in distinct[:_SHOWN_UNKNOWN])
                more = f" and {len(distinct) - _SHOWN_UNKNOWN} more" if len(distinct) > _SHOWN_UNKNOWN else ""
                print(f"note: {len(unknown)} prompt word(s) not in the vocabulary, read as {UNK}: {shown}{more}",
                      file=sys.stderr)
            return ids
        return np.asarray(tokenizer.encode(data), dtype=np.int64)

    def start_token(self) -> int:
        """A newline (the byte 10; SentencePiece's byte piece ``<0x0A>``;
        ``<eos>`` for words): unprompted text starts as if at the beginning of a line."""
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
            write_bytes(path, tokenizer.token_bytes(row))  # atomic: never a cut-off sample
        return paths

    def stream_text(self, new_tokens: np.ndarray) -> str | None:
        """Text of ``new_tokens`` ``[k]``; a character whose bytes are split
        across calls is printed once, when its last byte arrives. Words are
        separated by spaces across calls as within one."""
        tokenizer = self._require_tokenizer()
        if isinstance(tokenizer, WordVocabulary):
            text = tokenizer.text(new_tokens, after_word=self._after_word)
            self._after_word = tokenizer.ends_in_word(new_tokens, self._after_word)
            return text
        return self._stream.decode(tokenizer.token_bytes(new_tokens))

    def render_samples(self, tokens: np.ndarray, step: int) -> SampleMedia:
        """The first stream of ``tokens`` ``[B, T]`` as TensorBoard text."""
        text = decode_text(self._require_tokenizer().token_bytes(np.asarray(tokens)[0]))
        # TensorBoard renders markdown; a 4-space indent keeps line breaks and markup as written.
        return SampleMedia(texts={"samples/text": "    " + text.replace("\n", "\n    ")})
