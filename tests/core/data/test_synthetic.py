"""The synthetic corpus: deterministic, disjoint splits, learnable structure."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from ct_core.cli.sample import add_request_arguments, request_from_args
from ct_core.errors import ConfigError
from ct_core.data.frontend import SPLITS, build_frontend
from ct_core.data.synthetic import SyntheticFrontEnd


def frontend(**options) -> SyntheticFrontEnd:
    fe = build_frontend({"frontend": "synthetic", **options})
    assert isinstance(fe, SyntheticFrontEnd)
    fe.prepare()
    return fe


def test_same_seed_same_documents_other_seed_other_documents() -> None:
    a, b, c = frontend(seed=7), frontend(seed=7), frontend(seed=8)
    for split in SPLITS:
        assert len(a.documents(split)) == len(b.documents(split))
        for x, y in zip(a.documents(split), b.documents(split)):
            np.testing.assert_array_equal(x, y)
    assert not any(np.array_equal(x, y) for x, y in zip(a.documents("train"), c.documents("train")))


@pytest.mark.parametrize("kind", ["copy", "periodic"])
def test_splits_are_disjoint_and_documents_in_range(kind: str) -> None:
    fe = frontend(n_documents=50, min_len=100, max_len=300, vocab_size=20, kind=kind, seed=1)
    splits = {s: fe.documents(s) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [40, 5, 5]
    seen = {}
    for split, docs in splits.items():
        for doc in docs:
            assert 100 <= len(doc) <= 300
            assert doc.min() >= 0 and doc.max() < 20
            key = doc.tobytes()
            assert key not in seen, f"a {split} document also appears in {seen.get(key)}"
            seen[key] = split


def test_tiny_corpus_still_has_every_split() -> None:
    fe = frontend(n_documents=3)
    assert [len(fe.documents(s)) for s in SPLITS] == [1, 1, 1]


def conditional_entropy(docs: list[np.ndarray], vocab: int, context: int) -> float:
    """Entropy (nats) of the next token given the previous ``context`` tokens
    within each document, estimated by counting."""
    counts: dict[tuple, np.ndarray] = {}
    for doc in docs:
        for t in range(context, len(doc)):
            counts.setdefault(tuple(doc[t - context : t]), np.zeros(vocab))[doc[t]] += 1
    total = sum(c.sum() for c in counts.values())
    h = 0.0
    for c in counts.values():
        p = c[c > 0] / c.sum()
        h -= c.sum() / total * float((p * np.log(p)).sum())
    return h


def test_documents_have_learnable_structure() -> None:
    fe = frontend(n_documents=30, min_len=300, max_len=600, vocab_size=32)
    docs = fe.documents("train")
    # a bigram model already beats the uniform ln 32 = 3.47 nats by a wide margin
    assert conditional_entropy(docs, 32, 1) < math.log(32) - 1.0
    # long-range copies: many 8-grams recur more than 64 tokens after their first use,
    # outside the periodic runs (an 8-gram with more than 6 distinct tokens)
    far_repeats = 0
    for doc in docs:
        first: dict[bytes, int] = {}
        for t in range(len(doc) - 8):
            gram = doc[t : t + 8]
            if len(set(gram.tolist())) < 7:
                continue
            key = gram.tobytes()
            if key in first and t - first[key] > 64:
                far_repeats += 1
            first.setdefault(key, t)
    assert far_repeats > 50


def test_metrics_are_nll_ppl_and_bits() -> None:
    m = frontend().metrics(nll_sum=2.0 * math.log(2) * 100, n_tokens=100, split="valid")
    assert m["nll"] == pytest.approx(2 * math.log(2))
    assert m["ppl"] == pytest.approx(4.0)
    assert m["bits_per_token"] == pytest.approx(2.0)


def test_sampling_helpers(tmp_path) -> None:
    fe = frontend(vocab_size=16)
    parser = argparse.ArgumentParser()
    add_request_arguments(parser, fe.SampleRequest)

    def request(*argv):
        return request_from_args(fe.SampleRequest, parser.parse_args(list(argv)))

    args = request("--prompt", "1 2 15", "--tokens", "5")
    np.testing.assert_array_equal(fe.encode_prompt(args), [1, 2, 15])
    assert fe.num_new_tokens(args) == 5
    assert fe.encode_prompt(request()).size == 0
    with pytest.raises(ConfigError, match="--prompt"):
        fe.encode_prompt(request("--prompt", "1 16"))
    with pytest.raises(ConfigError, match="--prompt"):
        fe.encode_prompt(request("--prompt", "a b"))
    with pytest.raises(ConfigError, match="--tokens 0: must be a positive integer"):
        request("--tokens", "0")
    assert fe.render_samples(np.array([[1, 2], [3, 4]]), step=3).texts == {"samples/0": "1 2", "samples/1": "3 4"}

    (one,) = fe.decode(np.array([[1, 2, 3, 4]]), tmp_path / "one", prompt_len=1)
    assert one == tmp_path / "one.txt" and one.read_text().split() == ["1", "2", "3", "4"]
    many = fe.decode(np.array([[1, 2], [3, 4], [5, 6]]), tmp_path / "many", prompt_len=0)
    assert [p.read_text().split() for p in many] == [["1", "2"], ["3", "4"], ["5", "6"]]
    assert fe.stream_text(np.array([7, 8])) == "7 8 "
    assert fe.state_dict() == {}


@pytest.mark.parametrize(
    "options, option",
    [({"kind": "nope"}, "data.kind"), ({"min_len": 1}, "data.min_len"), ({"n_documents": 2}, "data.n_documents"),
     ({"max_len": 10}, "data.max_len"), ({"colour": 1}, "data.colour")],
)
def test_bad_options_name_the_option(options: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        build_frontend({"frontend": "synthetic", **options})
