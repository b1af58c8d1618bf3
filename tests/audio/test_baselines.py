"""Unigram / trigram baselines and the front end's metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import ct_audio.baselines as baselines
from ct_audio.baselines import evaluate, fit_ngrams
from ct_core.data.frontend import SPLITS, build_frontend

from .conftest import tone, write

V = 256


def test_hand_computed_tiny_example():
    counts = fit_ngrams([np.array([1, 2, 3, 1, 2], dtype=np.uint8)], V)
    # train: unigrams 1:2 2:2 3:1 (N = 5); bigrams (1,2):2 (2,3):1 (3,1):1;
    # trigrams (1,2,3) (2,3,1) (3,1,2) once each.
    docs = [np.array([1, 2, 3], dtype=np.uint8), np.array([2, 2], dtype=np.uint8),
            np.array([7], dtype=np.uint8), np.array([], dtype=np.uint8)]
    out = evaluate(counts, docs)
    # predicted: 2 and 3 of the first utterance, the second 2 of the next; the
    # one-sample and empty utterances predict nothing.
    assert out["tokens"] == 3
    unigram = -(2 * math.log2(3 / 261) + math.log2(2 / 261)) / 3
    trigram = -(math.log2(3 / 258)      # 2 | 1: bigram back-off, (2 + 1) / (2 + 256)
                + math.log2(2 / 257)    # 3 | 1 2: trigram, (1 + 1) / (1 + 256)
                + math.log2(1 / 257)) / 3  # 2 | 2: bigram back-off, (0 + 1) / (1 + 256)
    assert out["unigram_bits"] == pytest.approx(unigram, rel=1e-12)
    assert out["trigram_bits"] == pytest.approx(trigram, rel=1e-12)


def _slow_reference(train, docs):
    """Dictionary counts and a per-position loop: the obvious implementation."""
    uni, bi, tri = {}, {}, {}
    for d in train:
        d = [int(c) for c in d]
        for c in d:
            uni[c] = uni.get(c, 0) + 1
        for a, b in zip(d, d[1:]):
            bi[(a, b)] = bi.get((a, b), 0) + 1
        for a, b, c in zip(d, d[1:], d[2:]):
            tri[(a, b, c)] = tri.get((a, b, c), 0) + 1
    n = sum(uni.values())
    u_bits = t_bits = 0.0
    tokens = 0
    for d in docs:
        d = [int(c) for c in d]
        for t in range(1, len(d)):
            tokens += 1
            u_bits -= math.log2((uni.get(d[t], 0) + 1) / (n + V))
            if t == 1:
                ctx = sum(v for (a, _), v in bi.items() if a == d[0])
                t_bits -= math.log2((bi.get((d[0], d[1]), 0) + 1) / (ctx + V))
            else:
                ctx = sum(v for (a, b, _), v in tri.items() if (a, b) == (d[t - 2], d[t - 1]))
                t_bits -= math.log2((tri.get((d[t - 2], d[t - 1], d[t]), 0) + 1) / (ctx + V))
    return u_bits / tokens, t_bits / tokens, tokens


def test_vectorised_counts_equal_a_slow_reference_across_chunks(monkeypatch):
    monkeypatch.setattr(baselines, "_CHUNK", 64)  # force many chunk boundaries
    rng = np.random.default_rng(0)
    # a skewed alphabet, so contexts repeat and counts matter
    train = [rng.integers(120, 136, size=rng.integers(0, 90)).astype(np.uint8) for _ in range(25)]
    docs = [rng.integers(118, 138, size=rng.integers(0, 60)).astype(np.uint8) for _ in range(12)]
    out = evaluate(fit_ngrams(train, V), docs)
    u, t, tokens = _slow_reference(train, docs)
    assert out["tokens"] == tokens == sum(max(len(d) - 1, 0) for d in docs)
    assert out["unigram_bits"] == pytest.approx(u, rel=1e-10)
    assert out["trigram_bits"] == pytest.approx(t, rel=1e-10)


def _prepared(tmp_path):
    root = tmp_path / "corpus"
    for i in range(10):
        write(root / f"c{i}.wav", tone(200.0, 0.1, 8000), 8000)  # one 40-sample period
    fe = build_frontend({"frontend": "audio", "corpus": "folder", "root": str(root),
                         "cache_dir": str(tmp_path / "cache"), "sample_rate": 8000,
                         "valid_fraction": 0.2, "test_fraction": 0.2})
    return root, fe


def test_metrics_bits_and_cached_baselines(tmp_path, monkeypatch):
    root, fe = _prepared(tmp_path)
    before = fe.metrics(1234.5, 1000, "valid")  # nothing prepared yet: no baselines
    assert before == {"nll_nats": 1.2345, "bits_per_sample": 1.2345 / math.log(2)}
    fe.prepare(progress=False)
    m = fe.metrics(1234.5, 1000, "valid")
    assert m["bits_per_sample"] == m["nll_nats"] / math.log(2)
    expected = evaluate(fit_ngrams(fe.documents("train"), V), fe.documents("valid"))
    assert m["unigram_bits"] == pytest.approx(expected["unigram_bits"], rel=1e-12)
    assert m["trigram_bits"] == pytest.approx(expected["trigram_bits"], rel=1e-12)
    assert 0 < m["trigram_bits"] < m["unigram_bits"] < 8  # a periodic signal is predictable
    assert expected["tokens"] == sum(len(d) - 1 for d in fe.documents("valid"))
    cached = json.loads((fe.store.path / baselines.CACHE_FILE).read_text())
    assert set(cached) == {"valid", "test"}
    assert cached["valid"]["trigram_bits"] == m["trigram_bits"]

    def no_refit(*_):
        raise AssertionError("train counts were fitted again")

    monkeypatch.setattr(baselines, "fit_ngrams", no_refit)
    again = build_frontend({"frontend": "audio", "corpus": "folder", "root": str(root),
                            "cache_dir": str(tmp_path / "cache"), "sample_rate": 8000,
                            "valid_fraction": 0.2, "test_fraction": 0.2})
    assert again.metrics(1234.5, 1000, "test")["trigram_bits"] == cached["test"]["trigram_bits"]
    for split in SPLITS:
        assert len(fe.documents(split)) >= 1


def test_chunked_utterances_share_the_store_and_their_baselines_count_chunks(tmp_path):
    root, whole = _prepared(tmp_path)
    whole.prepare(progress=False)
    chunked = build_frontend({"frontend": "audio", "corpus": "folder", "root": str(root),
                              "cache_dir": str(tmp_path / "cache"), "sample_rate": 8000,
                              "valid_fraction": 0.2, "test_fraction": 0.2, "chunk_samples": 300})
    chunked.prepare(progress=False)
    assert chunked.store.path == whole.store.path  # cut when read: one prepared store
    for split in SPLITS:
        pieces, utterances = chunked.documents(split), whole.documents(split)
        assert all(len(p) <= 300 for p in pieces) and len(pieces) > len(utterances)
        assert np.array_equal(np.concatenate(pieces), np.concatenate(utterances))
    m = chunked.metrics(1.0, 1, "valid")
    expected = evaluate(fit_ngrams(chunked.documents("train"), V), chunked.documents("valid"))
    assert expected["tokens"] == sum(len(p) - 1 for p in chunked.documents("valid"))
    assert m["trigram_bits"] == pytest.approx(expected["trigram_bits"], rel=1e-12)
