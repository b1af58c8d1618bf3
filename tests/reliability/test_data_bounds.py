"""Data options that would silently train on nonsense are refused in one
line naming the option: a sample rate outside 1-96 kHz, a loudness target
that leaves only silence in 8-bit μ-law, a vocabulary no model can hold or
one the byte tokenizer would ignore."""

from __future__ import annotations

import pytest

from ct_core.data.frontend import build_frontend
from ct_core.errors import ConfigError
from tests.conftest import run_cli
from tests.reliability.conftest import AUDIO, assert_one_line_error


@pytest.mark.parametrize("rate", [7, 999, 96_001, 1_000_000_000])
def test_sample_rate_outside_1_to_96_khz_is_refused(rate):
    with pytest.raises(ConfigError) as err:
        build_frontend({"frontend": "audio", "sample_rate": rate})
    assert str(err.value) == (f"data.sample_rate={rate} must lie in 1,000..96,000 Hz, e.g. 24000 (the paper) or 8000")


@pytest.mark.parametrize("rate", [1_000, 8_000, 96_000])
def test_sample_rate_inside_the_bounds_is_accepted(rate):
    assert build_frontend({"frontend": "audio", "sample_rate": rate}).cfg.sample_rate == rate


def test_ct_train_refuses_a_huge_sample_rate_before_writing_anything(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("ct-train", *AUDIO, "data.sample_rate=1000000000", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                   check=False)
    assert_one_line_error(proc, "ct-train: error: data.sample_rate=1000000000 must lie in 1,000..96,000 Hz")
    assert not run_dir.exists()


@pytest.mark.parametrize("name", ["peak_db", "rms_db"])
def test_a_loudness_target_below_minus_60_dbfs_is_refused(name):
    with pytest.raises(ConfigError) as err:
        build_frontend({"frontend": "audio", "normalize": "rms", name: -61.0})
    assert str(err.value) == (f"data.{name}=-61.0 must be >= -60 dBFS: quieter utterances are little more than "
                              "silence in 8-bit μ-law")
    assert getattr(build_frontend({"frontend": "audio", name: -60.0}).cfg, name) == -60.0


@pytest.mark.parametrize("size", [257, 2**20 + 1, 10**9])
def test_a_sentencepiece_vocabulary_outside_its_bounds_is_refused(size):
    with pytest.raises(ConfigError) as err:
        build_frontend({"frontend": "text", "corpus": "pg19", "vocab_size": size})
    assert str(err.value) == (f"data.vocab_size={size} must be an integer in 258..1,048,576 (256 byte pieces + "
                              "<unk> and at least one more; the paper's PG-19 uses 32000)")


def test_a_vocabulary_size_the_byte_tokenizer_would_ignore_is_refused():
    with pytest.raises(ConfigError) as err:
        build_frontend({"frontend": "text", "corpus": "enwik8", "vocab_size": 512})
    assert str(err.value) == ("data.vocab_size=512 has no effect with data.tokenizer=bytes (256 byte values); "
                              "set data.tokenizer=sentencepiece for subwords, or leave data.vocab_size out")
    # The same size with subwords, and bytes with the size left at its default, are fine.
    assert build_frontend({"frontend": "text", "corpus": "enwik8", "tokenizer": "sentencepiece",
                           "vocab_size": 512}).vocab_size == 512
    assert build_frontend({"frontend": "text", "corpus": "pg19", "tokenizer": "bytes"}).vocab_size == 256
