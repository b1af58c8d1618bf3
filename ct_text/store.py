"""Prepared text: where a corpus's token store lives and how it is written.

A store sits at ``<cache_dir>/text/<hash>/``, the hash covering every
setting its tokens depend on and the source files' paths, sizes and mtimes
(:func:`store_settings`), so an unchanged corpus is a cache hit that reads no
text. :func:`write_store` tokenizes every document and records, per split
and per document, the documents, tokens, bytes and whitespace-separated
words that the metrics (:mod:`ct_text.text_metrics`) divide by; with a word
vocabulary also the words it did not know (``unknown``, read as ``<unk>``).

Example::

    path = cache_dir / "text" / content_hash(store_settings(cfg, "bytes", corpus))
    write_store(path, corpus, ByteTokenizer(), model_file=None, progress=True)
    TokenStore(path).manifest["counts"]["valid"]     # documents, tokens, bytes, words
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from ct_core.data.frontend import SPLITS
from ct_core.data.split_check import check_splits
from ct_core.data.token_store import TokenStoreWriter, token_dtype
from ct_text.config import ROOT_CORPORA, TextConfig
from ct_text.corpus import Corpus, count_words, decode_text
from ct_text.tokenizer import Tokenizer
from ct_text.vocabulary import WordVocabulary

#: Bumped when the store's content or manifest changes, so old stores are not reused.
STORE_FORMAT = 1


def store_settings(cfg: TextConfig, tokenizer_kind: str, corpus: Corpus) -> dict[str, Any]:
    """Everything the store's content depends on (hashed into its folder name)."""
    settings: dict[str, Any] = {
        "format": STORE_FORMAT, "corpus": cfg.corpus, "tokenizer": tokenizer_kind, "listing": corpus.listing(),
    }
    if tokenizer_kind == "sentencepiece":
        settings.update(vocab_size=cfg.vocab_size, sentencepiece_type=cfg.sentencepiece_type,
                        tokenizer_sample_bytes=cfg.tokenizer_sample_bytes)
    if tokenizer_kind == "words":
        settings.update(vocab_size=cfg.vocab_size)
    if cfg.corpus == "file":
        settings.update(valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction)
    return settings


def source_option(corpus: Corpus) -> str:
    """The option that names ``corpus``'s location, as the user set it."""
    return f"data.{'root' if corpus.name in ROOT_CORPORA else 'path'}={corpus.root}"


def write_store(path: Path, corpus: Corpus, tokenizer: Tokenizer, model_file: str | None, progress: bool) -> Path:
    """Tokenize every document of ``corpus`` and write the store at ``path``;
    ``model_file`` names the cached SentencePiece model or word vocabulary
    used (None: bytes, or a checkpoint's). Empty documents are skipped and listed."""
    records: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    skipped = []
    total = sum(doc.size for doc in corpus.documents)
    with TokenStoreWriter(path, token_dtype(tokenizer.vocab_size)) as writer, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"tokenizing {corpus.name}",
        disable=None if progress else True,  # None: shown on a terminal only
    ) as bar:
        for doc in corpus.documents:
            data = doc.read()
            bar.update(doc.size)
            if not data:
                skipped.append({"split": doc.split, "name": doc.name, "reason": "empty"})
                continue
            unknown: dict[str, int] = {}
            if isinstance(tokenizer, WordVocabulary):
                ids, unknown["unknown"] = tokenizer.encode_counted(data)  # [L]
            else:
                ids = tokenizer.encode(data)  # [L]
            writer.add(doc.split, ids)
            records[doc.split].append({
                "name": doc.name, **doc.meta, "bytes": len(data),
                "words": count_words(decode_text(data)), "tokens": int(ids.size), **unknown,
            })
        # Zero-length byte ranges of a single file (a fraction of 0) are no input.
        planned = {split: [d.name for d in corpus.documents if d.split == split and (d.size or corpus.root.is_dir())]
                   for split in SPLITS}
        kept = {split: [(r["name"], r["tokens"]) for r in rows] for split, rows in records.items()}
        check_splits(source_option(corpus), planned, kept, {d["name"]: d["reason"] for d in skipped})
        counted = ("tokens", "bytes", "words") + (("unknown",) if isinstance(tokenizer, WordVocabulary) else ())
        counts = {split: {"documents": len(rows), **{k: sum(r[k] for r in rows) for k in counted}}
                  for split, rows in records.items()}
        manifest = {
            "frontend": "text", "format": STORE_FORMAT, "corpus": corpus.name, "source": str(corpus.root),
            "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                          "sha256": getattr(tokenizer, "sha256", None), "model": model_file},
            "counts": counts, "documents": records, "skipped": skipped,
        }
        return writer.finish(manifest, splits=SPLITS)
