"""Generic text files: a single file split by byte offset, a folder one file per document."""

from __future__ import annotations

import pytest

from ct_core.errors import ConfigError, DataError
from ct_text.config import TextConfig
from ct_text import frontend as text_frontend
from ct_text.frontend import TextFrontEnd
from ct_text.text_files import folder_split_counts, single_file_ranges, text_file_corpus


def test_single_file_offsets_match_nanogpt_tiny_shakespeare():
    # nanoGPT: train = data[:int(n * 0.9)], val = data[int(n * 0.9):]
    n = 1_115_394
    assert single_file_ranges(n, 0.1, 0.0) == {
        "train": (0, int(n * 0.9)), "valid": (1_003_854, n), "test": (n, n),
    }
    assert single_file_ranges(1_000, 0.1, 0.1) == {"train": (0, 800), "valid": (800, 900), "test": (900, 1_000)}


def test_single_file_last_tenth_is_valid(tmp_path):
    data = bytes(range(256)) * 4 + b"tail\r\n" * 6  # 1,060 bytes, not text on purpose
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    fe = TextFrontEnd(TextConfig(corpus="file", path=str(path), cache_dir=str(tmp_path / "cache")))
    (train,), (valid,) = fe.documents("train"), fe.documents("valid")
    assert train.tobytes() == data[:954] and valid.tobytes() == data[954:]
    assert fe.documents("test") == []
    assert fe.counts("valid") == {"documents": 1, "tokens": 106, "bytes": 106,
                                  "words": len(data[954:].decode("utf-8", errors="replace").split())}


def test_single_file_bom_is_stripped_before_splitting(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"x" * 90 + b"y" * 10)
    corpus = text_file_corpus(path, 0.1, 0.0)
    assert [d.read() for d in corpus.documents] == [b"x" * 90, b"y" * 10, b""]


def test_folder_is_one_document_per_file(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    files = {"a.txt": b"alpha one\n", "b.txt": b"\xef\xbb\xbfbravo two\r\n", "sub/c.md": b"charlie\n",
             "d.txt": b"", "e.txt": b"echo five six\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / ".hidden").write_bytes(b"never read")
    corpus = text_file_corpus(folder, valid_fraction=0.2, test_fraction=0.0)
    assert [(d.split, d.name) for d in corpus.documents] == [
        ("train", "a.txt"), ("train", "b.txt"), ("train", "d.txt"), ("train", "e.txt"), ("valid", "sub/c.md"),
    ]
    fe = TextFrontEnd(TextConfig(corpus="file", path=str(folder), valid_fraction=0.2,
                                 cache_dir=str(tmp_path / "cache")))
    train = [d.tobytes() for d in fe.documents("train")]
    assert train == [b"alpha one\n", b"bravo two\r\n", b"echo five six\n"]  # BOM gone, empty skipped
    assert [d.tobytes() for d in fe.documents("valid")] == [b"charlie\n"]
    assert fe.counts("train")["words"] == 7


def test_folder_split_counts_give_every_positive_fraction_a_file():
    assert folder_split_counts(10, 0.1, 0.0) == {"train": 9, "valid": 1, "test": 0}
    assert folder_split_counts(3, 0.01, 0.01) == {"train": 1, "valid": 1, "test": 1}
    assert folder_split_counts(40, 0.1, 0.05) == {"train": 34, "valid": 4, "test": 2}


def test_bad_options_and_paths_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.valid_fraction"):
        TextConfig(corpus="file", valid_fraction=1.5).validate()
    with pytest.raises(ConfigError, match="data.path is not set"):
        TextFrontEnd(TextConfig(corpus="file", cache_dir=str(tmp_path))).prepare(progress=False)
    with pytest.raises(DataError, match="no such file or folder"):
        text_file_corpus(tmp_path / "missing.txt")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "only.txt").write_text("just one file")
    with pytest.raises(DataError, match="1 file"):
        text_file_corpus(tmp_path / "one", 0.1, 0.0)


def test_unchanged_file_is_a_cache_hit_and_an_edit_is_not(tmp_path, monkeypatch):
    path = tmp_path / "input.txt"
    path.write_bytes(b"some text\n" * 50)
    cfg = TextConfig(corpus="file", path=str(path), cache_dir=str(tmp_path / "cache"))
    writes = []
    original = text_frontend.write_store
    monkeypatch.setattr(text_frontend, "write_store", lambda *a: writes.append(1) or original(*a))
    first = TextFrontEnd(cfg)
    first.prepare(progress=False)
    second = TextFrontEnd(cfg)
    second.prepare(progress=False)
    assert len(writes) == 1 and second._store.path == first._store.path
    path.write_bytes(b"other text\n" * 60)
    third = TextFrontEnd(cfg)
    third.prepare(progress=False)
    assert len(writes) == 2 and third._store.path != first._store.path
    assert third.documents("valid")[0].tobytes() == (b"other text\n" * 60)[594:]
