"""enwik8 reader: zip and raw file, md5 check, 90/5/5 split, download errors."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from ct_core.errors import DataError
from ct_text import enwik8
from ct_text.enwik8 import enwik8_corpus, read_enwik8, split_ranges
from ct_text.config import TextConfig
from ct_text.frontend import TextFrontEnd


def small_enwik8(n: int = 2_000) -> bytes:
    rng = random.Random(0)
    body = "".join(rng.choice("abc de\n<>/\u00e9") for _ in range(n)).encode()
    return (b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.3/">' + body)[:n]


def test_split_arithmetic_on_the_real_size():
    ranges = split_ranges(100_000_000)
    assert ranges == {
        "train": (0, 90_000_000),
        "valid": (90_000_000, 95_000_000),
        "test": (95_000_000, 100_000_000),
    }


def test_split_of_another_size_keeps_proportions_and_covers_the_file():
    ranges = split_ranges(2_001)
    assert ranges["train"] == (0, 1_800) and ranges["valid"] == (1_800, 1_900)
    assert ranges["test"] == (1_900, 2_001)  # the remainder goes to test, nothing is lost


def test_zip_and_raw_give_the_same_bytes_in_file_order(tmp_path, corpora):
    data = small_enwik8()
    raw = tmp_path / "enwik8"
    raw.write_bytes(data)
    zipped = corpora.make_zip(tmp_path / "enwik8.zip", data)
    from_raw = enwik8_corpus(raw, accept_md5_mismatch=True)
    from_zip = enwik8_corpus(zipped, accept_md5_mismatch=True)
    for split in ("train", "valid", "test"):
        (a,), (b,) = from_raw.split(split), from_zip.split(split)
        assert a.read() == b.read()
    assert b"".join(d.read() for d in from_zip.documents) == data
    assert [len(d.read()) for d in from_zip.documents] == [1_800, 100, 100]


def test_md5_is_checked_and_a_matching_file_passes(tmp_path, corpora, monkeypatch):
    data = small_enwik8()
    path = corpora.make_zip(tmp_path / "enwik8.zip", data)
    with pytest.raises(DataError) as err:
        read_enwik8(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and enwik8.ENWIK8_MD5 in message
    assert hashlib.md5(data).hexdigest() in message
    assert "data.accept_md5_mismatch=true" in message
    monkeypatch.setattr(enwik8, "ENWIK8_MD5", hashlib.md5(data).hexdigest())
    assert read_enwik8(path) == data


def test_truncated_zip_is_a_one_line_error(tmp_path, corpora):
    path = corpora.make_zip(tmp_path / "enwik8.zip", small_enwik8())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        enwik8_corpus(path, accept_md5_mismatch=True).documents[0].read()
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_zip_member_is_a_one_line_error(tmp_path, corpora):
    path = corpora.make_zip(tmp_path / "enwik8.zip", small_enwik8(20_000))
    blob = bytearray(path.read_bytes())
    start = 30 + len("enwik8")  # local header, then the deflate stream
    for i in range(start + 10, start + 200):
        blob[i] ^= 0x5A
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as err:
        read_enwik8(path, accept_md5_mismatch=True)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_member_is_named(tmp_path, corpora):
    path = corpora.make_zip(tmp_path / "enwik8.zip", small_enwik8(), member="enwik9")
    with pytest.raises(DataError) as err:
        enwik8_corpus(path)
    assert "'enwik8'" in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(enwik8, "ENWIK8_URL", "http://127.0.0.1:9/enwik8.zip")
    fe = TextFrontEnd(TextConfig(corpus="enwik8", download=True, cache_dir=str(tmp_path / "cache")))
    with pytest.raises(DataError) as err:
        fe.prepare(progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "http://127.0.0.1:9/enwik8.zip" in message and "data.path=/path/to/enwik8.zip" in message
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_missing_file_without_download_names_the_options(tmp_path):
    fe = TextFrontEnd(TextConfig(corpus="enwik8", path=str(tmp_path / "nope.zip"), cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match="data.path=.*data.download=true"):
        fe.prepare(progress=False)


def test_front_end_stores_the_bytes_and_reports_bpc(tmp_path, corpora):
    data = small_enwik8()
    path = corpora.make_zip(tmp_path / "enwik8.zip", data)
    fe = TextFrontEnd(TextConfig(corpus="enwik8", path=str(path), accept_md5_mismatch=True,
                                 cache_dir=str(tmp_path / "cache")))
    assert fe.vocab_size == 256
    docs = {split: fe.documents(split) for split in ("train", "valid", "test")}
    assert all(len(d) == 1 and d[0].dtype == np.uint8 for d in docs.values())
    assert b"".join(docs[s][0].tobytes() for s in ("train", "valid", "test")) == data
    m = fe.metrics(nll_sum=99 * np.log(2.0), n_tokens=99, split="valid")
    assert m["bpc"] == pytest.approx(1.0)
    assert m["bits_per_byte"] == pytest.approx(99 / 100)
