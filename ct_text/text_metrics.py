"""Metrics of text language models from a summed NLL.

All take ``nll_sum``, the negative log-likelihood in nats summed over the
``n_tokens`` predicted tokens of a complete pass over a split:

* ``nll``: nats per predicted token; ``token_ppl = exp(nll)``.
* ``bpc`` (byte tokenizers only): bits per predicted byte,
  ``nll_sum / n_tokens / ln 2`` (enwik8's "bits per character").
* ``bits_per_byte``: ``nll_sum / ln 2 / n_bytes``, over every byte of the
  split, whatever the tokenizer, so subword and byte models compare.
* ``word_ppl``: ``exp(nll_sum / n_words)``, with ``n_words`` the split's
  whitespace-separated words (PG-19's metric, independent of the tokenizer).
* ``bytes_per_token``: ``n_bytes / n_split_tokens``, how much text a token holds.

Word vocabularies (WikiText) report :func:`word_metrics` instead:

* ``ppl``: ``exp(nll_sum / n_tokens)`` over every predicted token, ``<eos>``
  included -- Transformer-XL's convention, and the paper's WikiText-103
  perplexity (17.1 for the Compressive Transformer, 18.1 for Transformer-XL).
* ``unigram_ppl``: the same over the same tokens for a unigram model of the
  training split's tokens with add-one smoothing,
  ``p(w) = (N(w) + 1) / (N + V)``: the perplexity a model that ignores
  context gets, so a trained model must end well below it.

The core's evaluator predicts every token of a document except its first
(nothing comes before it), so ``n_tokens`` is the split's tokens minus its
documents. ``bits_per_byte`` and ``word_ppl`` still divide by *all* bytes and
words of the split: the few unpredicted first tokens (one per book) are
negligible, and normalising by the full text keeps the numbers comparable
with published ones, which divide by the split's words.

Example::

    text_metrics(nll_sum=693.1, n_tokens=1000, bytes_tokenizer=True)["bpc"]   # ~1.0
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LN2 = math.log(2.0)
_CHUNK = 1 << 24


def _exp(x: float) -> float:
    # A diverged model's perplexity is infinite, not an OverflowError.
    return math.exp(x) if x < 709.0 else math.inf


def text_metrics(
    nll_sum: float,
    n_tokens: int,
    bytes_tokenizer: bool,
    n_bytes: int | None = None,
    n_words: int | None = None,
    n_split_tokens: int | None = None,
) -> dict[str, float]:
    """The metrics above; those whose count is unknown (``None``) or zero are left out."""
    if n_tokens <= 0:
        return {"nll": math.nan, "token_ppl": math.nan}
    nll = nll_sum / n_tokens
    out = {"nll": nll, "token_ppl": _exp(nll)}
    if bytes_tokenizer:
        out["bpc"] = nll / LN2
    if n_bytes:
        out["bits_per_byte"] = nll_sum / LN2 / n_bytes
        if n_split_tokens:
            out["bytes_per_token"] = n_bytes / n_split_tokens
    if n_words:
        out["word_ppl"] = _exp(nll_sum / n_words)
    return out


def word_metrics(nll_sum: float, n_tokens: int, unigram_ppl: float | None = None) -> dict[str, float]:
    """``nll`` and ``ppl`` per predicted token (``<eos>`` included), and the
    unigram baseline's perplexity when known."""
    if n_tokens <= 0:
        return {"nll": math.nan, "ppl": math.nan}
    nll = nll_sum / n_tokens
    out = {"nll": nll, "ppl": _exp(nll)}
    if unigram_ppl is not None:
        out["unigram_ppl"] = unigram_ppl
    return out


def unigram_ppl(train: Sequence[np.ndarray], documents: Sequence[np.ndarray], vocab_size: int) -> float:
    """Perplexity of the add-one unigram of ``train``'s tokens on the tokens
    of ``documents`` that a model predicts (each document's but its first)."""
    counts = np.zeros(vocab_size, dtype=np.float64)  # [V]
    for doc in train:
        for start in range(0, len(doc), _CHUNK):  # bounded memory on WikiText-103's 103M tokens
            counts += np.bincount(np.asarray(doc[start:start + _CHUNK], dtype=np.int64), minlength=vocab_size)
    log_p = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)  # [V]
    nll_sum, n = 0.0, 0
    for doc in documents:
        for start in range(1, len(doc), _CHUNK):
            predicted = np.asarray(doc[start:start + _CHUNK], dtype=np.int64)
            nll_sum -= float(log_p[predicted].sum())
            n += predicted.size
    return _exp(nll_sum / n) if n else math.nan
