"""PG-19 reader: official layout, byte-exact books, clear errors, the real sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from ct_core.errors import ConfigError, DataError
from ct_text.config import TextConfig
from ct_text.frontend import TextFrontEnd
from ct_text.pg19 import pg19_corpus, read_metadata

#: shared/data/text/pg19_sample beside the checkout; absent on some machines.
PG19_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text" / "pg19_sample"


def test_books_are_read_byte_exact_in_numeric_order(pg19_tree, corpora):
    books = corpora.tricky_books()
    corpus = pg19_corpus(pg19_tree)
    train = corpus.split("train")
    assert [d.name for d in train] == ["train/84.txt", "train/1342.txt", "train/2701.txt"]
    assert train[0].read() == books["train/84.txt"]  # CRLF kept
    assert b"\r\n" in train[0].read()
    assert train[2].read() == books["train/2701.txt"][3:]  # BOM stripped, nothing else
    valid = {d.name: d for d in corpus.split("valid")}  # "validation" is split "valid"
    assert valid["validation/11.txt"].read().endswith(b"bad \xff\xfe bytes \xc3\n")
    assert valid["validation/11.txt"].meta["title"] == "Book 11 by Someone"
    assert valid["validation/11.txt"].meta["year"] == "1911"


def test_prepared_tree_keeps_word_counts_and_skips_empty_books(pg19_tree, corpora, tmp_path):
    books = corpora.tricky_books()
    fe = TextFrontEnd(TextConfig(corpus="pg19", root=str(pg19_tree), tokenizer="bytes",
                                 cache_dir=str(tmp_path / "cache")))
    fe.prepare(progress=False)
    manifest = fe._store.manifest
    for split, rows in manifest["documents"].items():
        docs = fe.documents(split)
        assert len(docs) == len(rows)
        for row, doc in zip(rows, docs):
            data = books[row["name"]]
            data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
            assert doc.tobytes() == data
            assert row["words"] == len(data.decode("utf-8", errors="replace").split())
            assert row["bytes"] == len(data)
    skipped = {(s["split"], s["name"]) for s in manifest["skipped"]}
    assert skipped == {("valid", "validation/1661.txt"), ("test", "test/10321.txt")}  # empty, BOM-only
    valid_words = sum(len(books[n].decode("utf-8", errors="replace").split())
                      for n in ("validation/11.txt", "validation/1661.txt"))
    assert fe.counts("valid")["words"] == valid_words


def test_sentencepiece_round_trips_crlf_and_survives_invalid_utf8(pg19_tree, corpora, tmp_path):
    books = corpora.tricky_books()
    fe = TextFrontEnd(TextConfig(corpus="pg19", root=str(pg19_tree), vocab_size=400,
                                 cache_dir=str(tmp_path / "cache")))
    fe.prepare(progress=False)
    tok = fe._tokenizer
    (crlf,) = [d for d, r in zip(fe.documents("train"), fe._store.manifest["documents"]["train"])
               if r["name"] == "train/84.txt"]
    assert tok.token_bytes(crlf) == books["train/84.txt"]
    (bad,) = fe.documents("valid")
    assert tok.token_bytes(bad) == books["validation/11.txt"].decode("utf-8", errors="replace").encode()


def test_missing_metadata_is_named(tmp_path, corpora):
    root = corpora.write_pg19(tmp_path / "pg19", corpora.tricky_books(), metadata=False)
    with pytest.raises(DataError) as err:
        pg19_corpus(root)
    assert str(root / "metadata.csv") in str(err.value) and "\n" not in str(err.value)


def test_missing_split_folder_and_root_are_named(tmp_path, corpora):
    root = corpora.write_pg19(tmp_path / "pg19", corpora.tricky_books())
    for book in (root / "test").iterdir():
        book.unlink()
    (root / "test").rmdir()
    with pytest.raises(DataError, match=str(root / "test")):
        pg19_corpus(root)
    with pytest.raises(DataError, match="data.root=.*nowhere"):
        pg19_corpus(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="data.root"):
        TextFrontEnd(TextConfig(corpus="pg19", cache_dir=str(tmp_path))).prepare(progress=False)


def test_metadata_with_a_comma_in_the_title(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text("7,Dombey, and Son by Dickens,1848,http://www.gutenberg.org/ebooks/7\nbroken,row\n")
    with pytest.raises(DataError, match=r"metadata.csv:2: expected 4"):
        read_metadata(path)
    path.write_text("7,Dombey, and Son by Dickens,1848,http://www.gutenberg.org/ebooks/7\n")
    assert read_metadata(path)["7"] == {
        "title": "Dombey, and Son by Dickens", "year": "1848", "url": "http://www.gutenberg.org/ebooks/7",
    }


@pytest.mark.skipif(not PG19_SAMPLE.is_dir(), reason=f"the real PG-19 sample is absent ({PG19_SAMPLE})")
def test_real_sample_prepares_with_exact_word_counts(tmp_path):
    fe = TextFrontEnd(TextConfig(corpus="pg19", root=str(PG19_SAMPLE), vocab_size=600,
                                 tokenizer_sample_bytes=200_000, cache_dir=str(tmp_path / "cache")))
    fe.prepare(progress=False)
    manifest = fe._store.manifest
    assert {s: c["documents"] for s, c in manifest["counts"].items()} == {"train": 4, "valid": 3, "test": 4}
    for split, rows in manifest["documents"].items():
        for row, doc in zip(rows, fe.documents(split)):
            text = (PG19_SAMPLE / row["name"]).read_bytes().decode("utf-8", errors="replace")
            assert row["words"] == len(text.split())
            assert row["tokens"] == len(doc)
    assert manifest["documents"]["test"][0]["name"] == "test/10146.txt"
    assert manifest["documents"]["test"][0]["bytes"] == 253_872  # PG-19's published length
    assert manifest["counts"]["valid"]["words"] == 26_525 + 104_506 + 54_188
    assert fe.vocab_size == 600
