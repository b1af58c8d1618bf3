"""Text metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from ct_text.config import TextConfig
from ct_text.frontend import TextFrontEnd
from ct_text.text_metrics import text_metrics


def test_hand_computed_values():
    # 1000 predicted bytes at exactly 1 bit each: nll = ln 2 nats per token.
    m = text_metrics(nll_sum=1000 * math.log(2), n_tokens=1000, bytes_tokenizer=True,
                     n_bytes=2000, n_words=250, n_split_tokens=1001)
    assert m["nll"] == pytest.approx(math.log(2))
    assert m["token_ppl"] == pytest.approx(2.0)
    assert m["bpc"] == pytest.approx(1.0)
    assert m["bits_per_byte"] == pytest.approx(0.5)      # 1000 bits over 2000 bytes
    assert m["word_ppl"] == pytest.approx(16.0)          # exp(1000 ln 2 / 250) = 2^4
    assert m["bytes_per_token"] == pytest.approx(2000 / 1001)


def test_subword_metrics_have_no_bpc_and_unknown_counts_are_left_out():
    m = text_metrics(nll_sum=300.0, n_tokens=100, bytes_tokenizer=False, n_words=150)
    assert "bpc" not in m and "bits_per_byte" not in m
    assert m["word_ppl"] == pytest.approx(math.exp(2.0))
    assert text_metrics(1e6, 10, bytes_tokenizer=True, n_words=1)["word_ppl"] == math.inf
    assert math.isnan(text_metrics(0.0, 0, bytes_tokenizer=True)["nll"])


def test_front_end_divides_by_the_split_counts(tmp_path):
    text = b"one two three\nfour  five\r\nsix\n" * 10 + b"seven eight nine ten\n" * 10  # valid = last 21 bytes x 10
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    fe = TextFrontEnd(TextConfig(corpus="file", path=str(path), cache_dir=str(tmp_path / "cache")))
    n_bytes = len(text) - int(len(text) * 0.9)
    valid = text[len(text) - n_bytes:]
    n_words = len(valid.split())
    nll_sum = 123.0
    m = fe.metrics(nll_sum, n_bytes - 1, "valid")  # one document: its first byte is not predicted
    assert m["bpc"] == pytest.approx(nll_sum / (n_bytes - 1) / math.log(2))
    assert m["bits_per_byte"] == pytest.approx(nll_sum / math.log(2) / n_bytes)
    assert m["word_ppl"] == pytest.approx(math.exp(nll_sum / n_words))
