"""Tokenizers: exact round trips, cached and deterministic SentencePiece training."""

from __future__ import annotations

import numpy as np
import pytest

from ct_core.errors import ConfigError
from ct_text import tokenizer as tokenizer_module
from ct_text.config import TextConfig
from ct_text.frontend import TextFrontEnd
from ct_text.pg19 import pg19_corpus
from ct_text.tokenizer import ByteTokenizer, load_or_train_sentencepiece, training_sample

SAMPLE_TEXT = "Call me Ishmael.\r\n\tIndented  twice   spaced\n\nCaf\u00e9 \u201cna\u00efve\u201d \u2014 \u65e5\u672c\u8a9e \U0001F600\n"


def test_byte_tokenizer_round_trips_any_bytes():
    data = bytes(range(256)) + b"\r\n\xc3"
    tok = ByteTokenizer()
    ids = tok.encode(data)
    assert ids.dtype == np.uint8 and ids.tolist() == list(data)
    assert tok.token_bytes(ids) == data


@pytest.fixture
def trained(pg19_tree, tmp_path):
    corpus = pg19_corpus(pg19_tree)
    tok, path = load_or_train_sentencepiece(corpus.split("train"), 400, "unigram", None, tmp_path / "cache")
    return tok, path


def test_sentencepiece_round_trip_on_sample_text(trained):
    tok, _ = trained
    ids = tok.encode(SAMPLE_TEXT.encode())
    assert ids.dtype == np.int64 and ids.max() < tok.vocab_size
    assert tok.token_bytes(ids) == SAMPLE_TEXT.encode()
    assert tok._sp.decode(ids.tolist()) == SAMPLE_TEXT  # the lookup table agrees with SentencePiece
    assert len(ids) < len(SAMPLE_TEXT.encode())  # subwords, not bytes


def test_sentencepiece_training_is_cached_by_training_text(pg19_tree, tmp_path, monkeypatch):
    trainings = []
    original = tokenizer_module.train_sentencepiece
    monkeypatch.setattr(tokenizer_module, "train_sentencepiece",
                        lambda *a, **k: trainings.append(1) or original(*a, **k))
    cfg = TextConfig(corpus="pg19", root=str(pg19_tree), vocab_size=400, cache_dir=str(tmp_path / "cache"))
    first = TextFrontEnd(cfg)
    first.prepare(progress=False)
    (model,) = (tmp_path / "cache" / "text" / "tokenizers").glob("*.model")
    mtime = model.stat().st_mtime_ns
    # A new validation book changes the store but not the train text: the model is loaded, not retrained.
    (pg19_tree / "validation" / "1661.txt").write_text("A new validation book.\n")
    second = TextFrontEnd(cfg)
    second.prepare(progress=False)
    assert len(trainings) == 1 and model.stat().st_mtime_ns == mtime
    assert second._store.path != first._store.path
    assert second._tokenizer.model_proto == first._tokenizer.model_proto
    # A changed train book is new training text: trained again, under another name.
    (pg19_tree / "train" / "84.txt").write_text("Different training text.\n" * 200)
    TextFrontEnd(cfg).prepare(progress=False)
    assert len(trainings) == 2
    assert len(list((tmp_path / "cache" / "text" / "tokenizers").glob("*.model"))) == 2


def test_sentencepiece_training_is_deterministic(pg19_tree, tmp_path):
    runs = []
    for name in ("a", "b"):
        fe = TextFrontEnd(TextConfig(corpus="pg19", root=str(pg19_tree), vocab_size=400,
                                     tokenizer_sample_bytes=20_000, cache_dir=str(tmp_path / name)))
        fe.prepare(progress=False)
        runs.append(fe)
    assert runs[0]._tokenizer.model_proto == runs[1]._tokenizer.model_proto
    for split in ("train", "valid", "test"):
        assert [d.tolist() for d in runs[0].documents(split)] == [d.tolist() for d in runs[1].documents(split)]


def test_training_sample_is_capped_deterministic_and_whole_lines(pg19_tree):
    train = pg19_corpus(pg19_tree).split("train")
    whole = training_sample(train, None)
    assert whole == b"\n".join(d.read() for d in train)
    sample = training_sample(train, 6_000)
    assert sample == training_sample(train, 6_000)
    assert 3_000 < len(sample) <= 6_000
    for line in sample.split(b"\n"):
        assert line.strip() == b"" or any(line in d.read().split(b"\n") for d in train)  # never a cut line


def test_vocab_sizes_sentencepiece_cannot_use_are_config_errors(pg19_tree, tmp_path):
    with pytest.raises(ConfigError, match="data.vocab_size=200"):
        TextConfig(corpus="pg19", vocab_size=200).validate()
    fe = TextFrontEnd(TextConfig(corpus="pg19", root=str(pg19_tree), vocab_size=260, cache_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.vocab_size=260") as err:
        fe.prepare(progress=False)
    assert "\n" not in str(err.value)
