"""Count-based reference points for bits per sample: unigram and trigram of μ-law codes.

Both are fitted on the train split and evaluated as cross-entropy (bits per
sample) on another split, with add-one (Laplace) smoothing over the ``V``
classes, so an unseen code never costs infinitely many bits.

They count exactly the tokens the model is scored on: within each utterance,
every sample but the first (the first has no context at all). For a sample
at position ``t`` of an utterance ``x``:

- unigram: ``p(x_t) = (N(x_t) + 1) / (N + V)``, counts over all train samples;
- trigram, ``t >= 2``: ``p(x_t | x_{t-2}, x_{t-1}) = (N(x_{t-2}, x_{t-1}, x_t) + 1)
  / (N(x_{t-2}, x_{t-1}, .) + V)``;
- trigram, ``t = 1`` (only one sample of context): it backs off to the
  add-one bigram ``(N(x_0, x_1) + 1) / (N(x_0, .) + V)``.

N-grams never span two utterances, in fitting or in evaluation, matching a
model whose memory is reset at every utterance.

Counting is vectorised: an n-gram of codes is one integer key
(``(a * V + b) * V + c``) and counts are ``np.bincount`` over keys, in
chunks, into a dense ``V**3`` table (16.8 M entries for 256 classes).

Example::

    counts = fit_ngrams(store.documents("train"), 256)
    evaluate(counts, store.documents("valid"))   # {'unigram_bits': ..., 'trigram_bits': ..., 'tokens': ...}
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ct_core.atomic_write import write_text
from ct_core.errors import WriteError

#: Baseline numbers cached inside the store directory, keyed by split.
CACHE_FILE = "baselines.json"

# Keys gathered per np.bincount call: large enough that the per-call cost of
# the dense table is amortised, small enough to keep memory modest.
_CHUNK = 1 << 22


@dataclasses.dataclass
class NgramCounts:
    """n-gram counts of a set of utterances over ``vocab_size`` classes."""

    vocab_size: int
    unigram: np.ndarray  # [V]
    bigram: np.ndarray   # [V * V], key a * V + b
    trigram: np.ndarray  # [V * V * V], key (a * V + b) * V + c


def _keys(doc: np.ndarray, order: int, vocab_size: int) -> np.ndarray:
    """Keys ``[L - order + 1]`` of the ``order``-grams inside one utterance."""
    d = np.asarray(doc, dtype=np.int64)
    n = max(0, len(d) - order + 1)
    key = d[:n].copy()
    for k in range(1, order):
        key = key * vocab_size + d[k: k + n]
    return key


def _chunks(documents: Iterable[np.ndarray],
            fn: Callable[[np.ndarray], tuple[np.ndarray, ...]]) -> Iterator[tuple[np.ndarray, ...]]:
    """Concatenations of ``fn(doc)`` (tuples of arrays) over documents, about
    :data:`_CHUNK` elements at a time."""
    buf: list[tuple[np.ndarray, ...]] = []
    size = 0
    for doc in documents:
        parts = fn(doc)
        buf.append(parts)
        size += parts[0].size
        if size >= _CHUNK:
            yield tuple(np.concatenate(col) for col in zip(*buf))
            buf, size = [], 0
    if buf:
        yield tuple(np.concatenate(col) for col in zip(*buf))


def fit_ngrams(documents: Iterable[np.ndarray], vocab_size: int) -> NgramCounts:
    """Unigram, bigram and trigram counts of ``documents`` (each ``[L]`` codes)."""
    v = vocab_size
    uni = np.zeros(v, dtype=np.int64)
    bi = np.zeros(v * v, dtype=np.int64)
    tri = np.zeros(v * v * v, dtype=np.int64)

    def grams(doc: np.ndarray) -> tuple[np.ndarray, ...]:
        return _keys(doc, 1, v), _keys(doc, 2, v), _keys(doc, 3, v)

    for k1, k2, k3 in _chunks(documents, grams):
        uni += np.bincount(k1, minlength=v)
        bi += np.bincount(k2, minlength=v * v)
        tri += np.bincount(k3, minlength=v * v * v)
    return NgramCounts(v, uni, bi, tri)


def evaluate(counts: NgramCounts, documents: Iterable[np.ndarray]) -> dict[str, float]:
    """Cross-entropy in bits per predicted sample of both baselines on
    ``documents``, and the number of predicted samples (``tokens``)."""
    v = counts.vocab_size
    log_uni = np.log(counts.unigram + 1.0) - math.log(counts.unigram.sum() + v)  # [V]
    bi_context = counts.bigram.reshape(v, v).sum(axis=1)                          # [V]
    tri_context = counts.trigram.reshape(v * v, v).sum(axis=1)                    # [V * V]

    def targets(doc: np.ndarray) -> tuple[np.ndarray, ...]:
        d = np.asarray(doc, dtype=np.int64)
        return d[1:], _keys(d[:2], 2, v), _keys(d, 3, v)

    uni_nats = tri_nats = 0.0
    tokens = 0
    for predicted, first_pairs, triples in _chunks(documents, targets):
        tokens += predicted.size
        uni_nats -= log_uni[predicted].sum()
        # position 1 of each utterance: bigram back-off
        tri_nats -= (np.log(counts.bigram[first_pairs] + 1.0)
                     - np.log(bi_context[first_pairs // v] + float(v))).sum()
        # positions >= 2: trigram
        tri_nats -= (np.log(counts.trigram[triples] + 1.0)
                     - np.log(tri_context[triples // v] + float(v))).sum()
    if tokens == 0:
        return {"unigram_bits": float("nan"), "trigram_bits": float("nan"), "tokens": 0}
    return {
        "unigram_bits": float(uni_nats / tokens / math.log(2)),
        "trigram_bits": float(tri_nats / tokens / math.log(2)),
        "tokens": int(tokens),
    }


def cached_baselines(store_path: Path, documents: Callable[[str], Sequence[np.ndarray]],
                     split: str, vocab_size: int,
                     splits: Sequence[str] = ("valid", "test"), cache_name: str = CACHE_FILE) -> dict[str, float]:
    """The baselines of ``split`` for the store at ``store_path``, computed
    once and kept in ``<store>/<cache_name>``. ``documents(split)`` gives a
    split's documents as the model sees them; the first miss also fills in
    ``splits`` so the train counts are fitted only once."""
    cache = Path(store_path) / cache_name
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if split not in known:
        counts = fit_ngrams(documents("train"), vocab_size)
        for s in dict.fromkeys([split, *splits]):
            if s not in known:
                known[s] = evaluate(counts, documents(s))
        # Atomic: a concurrent reader sees old or new, never half. A store in a
        # read-only cache keeps no copy: the baselines are computed again next time.
        with contextlib.suppress(WriteError):
            write_text(cache, json.dumps(known, indent=2))
    return known[split]
