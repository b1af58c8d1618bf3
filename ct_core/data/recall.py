"""Long-range recall documents: tokens that decide later tokens lie far back.

A document is random *filler* in which a few *slots* each hold one secret
symbol. A slot's first event writes its symbol (repeated ``write_len``
times); every later event reads it back as ``[trigger_k, symbol_k]``, so the
token after a trigger can only be predicted by remembering the slot's
latest exposure. Gaps between events are log-uniform on
``[gap_min, gap_max]``: many short ones teach the copy mechanism quickly,
long ones probe how far back a model can reach.

Vocabulary of ``vocab_size`` ids, with K = ``recall_slots`` and
S = ``recall_symbols``::

    [0, F)                    filler, F = vocab_size - K - K * S
    F + k                     trigger of slot k
    F + K + k * S + s         symbol s of slot k

A *probe* is an input position ``p`` holding a trigger; the prediction made
there must be the slot's symbol (``doc[p + 1]``). Its *distance* is ``p``
minus the position of the slot's latest earlier symbol token. Both follow
from the tokens alone (:func:`recall_probes`), so a prepared split needs no
side information. With a memory that reaches ``R`` tokens back, probes at
distances beyond ``R`` are at chance (1 / S).

Example::

    doc = recall_document(cfg, index=0)           # [L] int64
    positions, distances = recall_probes(doc, cfg)
"""

from __future__ import annotations

import math

import numpy as np

#: Events start within this many tokens of a document's beginning.
FIRST_EVENT_MAX = 96


def filler_size(vocab_size: int, slots: int, symbols: int) -> int:
    """F: the filler ids left once triggers and symbols are assigned."""
    return vocab_size - slots - slots * symbols


def recall_document(cfg, index: int) -> np.ndarray:
    """Document ``index`` of the recall corpus ``cfg`` (a SyntheticConfig with
    ``kind="recall"``), ``[L]`` int64; deterministic in ``(seed, index)``."""
    rng = np.random.default_rng([cfg.seed, index, 1])
    k_slots, s_symbols = cfg.recall_slots, cfg.recall_symbols
    n_filler = filler_size(cfg.vocab_size, k_slots, s_symbols)
    length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
    tokens = rng.integers(0, n_filler, size=length)
    symbol = n_filler + k_slots + np.arange(k_slots) * s_symbols + rng.integers(0, s_symbols, size=k_slots)  # [K]
    next_event = rng.integers(0, FIRST_EVENT_MAX, size=k_slots)  # [K]
    written = np.zeros(k_slots, dtype=bool)
    log_lo, log_hi = math.log(cfg.recall_gap_min), math.log(cfg.recall_gap_max)
    p = 0
    while p < length:
        due = np.flatnonzero(next_event <= p)
        if due.size == 0:
            p = int(next_event.min())
            continue
        k = int(due[np.argmin(next_event[due])])  # earliest first; ties to the lowest slot
        n = cfg.recall_write_len if not written[k] else 2
        if p + n > length:
            break
        if written[k]:
            tokens[p], tokens[p + 1] = n_filler + k, symbol[k]
        else:
            tokens[p : p + n] = symbol[k]
            written[k] = True
        p += n
        next_event[k] = p + round(math.exp(rng.uniform(log_lo, log_hi)))
    return tokens


def recall_probes(tokens: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Probe positions ``[R]`` (triggers followed by a token) and their
    distances ``[R]`` to the slot's latest earlier symbol token."""
    tokens = np.asarray(tokens, dtype=np.int64)
    k_slots, s_symbols = cfg.recall_slots, cfg.recall_symbols
    n_filler = filler_size(cfg.vocab_size, k_slots, s_symbols)
    is_symbol = tokens >= n_filler + k_slots
    slot_of_symbol = np.where(is_symbol, (tokens - n_filler - k_slots) // s_symbols, -1)  # [L]
    positions, distances = [], []
    last_seen = np.full(k_slots, -1, dtype=np.int64)
    for p, (tok, slot) in enumerate(zip(tokens[:-1].tolist(), slot_of_symbol[:-1].tolist())):
        if n_filler <= tok < n_filler + k_slots and last_seen[tok - n_filler] >= 0:
            positions.append(p)
            distances.append(p - last_seen[tok - n_filler])
        if slot >= 0:
            last_seen[slot] = p
    return np.asarray(positions, dtype=np.int64), np.asarray(distances, dtype=np.int64)


def accuracy_by_distance(
    correct: np.ndarray, distances: np.ndarray, width: int, max_distance: int
) -> dict[str, dict[str, float]]:
    """Exact-match accuracy of probes ``correct`` ``[R]`` bool, in buckets of
    ``width`` tokens of distance up to ``max_distance`` (then one last bucket):
    ``{"1-32": {"accuracy": ..., "probes": ...}, ...}``."""
    out = {}
    edges = list(range(0, max_distance, width)) + [max_distance]
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (distances > lo) & (distances <= hi)
        if sel.any():
            out[f"{lo + 1}-{hi}"] = {"accuracy": float(correct[sel].mean()), "probes": int(sel.sum())}
    sel = distances > max_distance
    if sel.any():
        out[f">{max_distance}"] = {"accuracy": float(correct[sel].mean()), "probes": int(sel.sum())}
    return out
