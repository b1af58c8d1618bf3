"""Preparation into a token store: exact codes, caching, skipped files, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import ct_audio.audio_io as audio_io
from ct_audio.frontend import AudioFrontEnd
from ct_core.errors import DataError
from ct_core.data.frontend import SPLITS, build_frontend
from ct_core.data.token_store import TokenStore

from .conftest import reference_codes, tone, write


def _corpus(root: Path) -> Path:
    """Six utterances at mixed rates, formats and channel counts."""
    write(root / "a" / "one.wav", tone(220.0, 0.30, 8000, seed=1), 8000)
    write(root / "a" / "two.flac", tone(330.0, 0.25, 16000, seed=2), 16000)
    write(root / "b" / "three.wav", tone(440.0, 0.20, 22050, seed=3), 22050, subtype="PCM_24")
    stereo = np.stack([tone(500.0, 0.2, 44100, seed=4), tone(700.0, 0.2, 44100, seed=5)], axis=1)
    write(root / "b" / "four.wav", stereo, 44100)
    write(root / "c" / "five.wav", tone(150.0, 0.3, 24000, amp=0.9, seed=6), 24000, subtype="FLOAT")
    write(root / "c" / "six.wav", tone(900.0, 0.1, 11025, seed=7), 11025, subtype="PCM_U8")
    return root


def _stores(cache: Path) -> list[Path]:
    """Entries of the audio cache but the preparation locks beside the stores."""
    return [p for p in (cache / "audio").iterdir() if not p.name.endswith(".lock")]


def _frontend(root: Path, cache: Path, **kw) -> AudioFrontEnd:
    cfg = {"frontend": "audio", "corpus": "folder", "root": str(root), "cache_dir": str(cache),
           "valid_fraction": 0.2, "test_fraction": 0.2, "sample_rate": 16000, **kw}
    return build_frontend(cfg)


def test_documents_are_the_mulaw_codes_of_the_resampled_audio(tmp_path):
    root = _corpus(tmp_path / "corpus")
    fe = _frontend(root, tmp_path / "cache")
    fe.prepare(progress=False)
    manifest = fe.store.manifest
    assert fe.store.path.parent == tmp_path / "cache" / "audio"
    assert fe.store.path.name == manifest["hash"]
    assert manifest["skipped"] == []
    assert manifest["sample_rate"] == 16000 and manifest["mu_law"]["classes"] == 256
    assert sum(manifest["counts"][s]["utterances"] for s in SPLITS) == 6
    assert all(manifest["counts"][s]["utterances"] >= 1 for s in SPLITS)
    seen = 0
    for split in SPLITS:
        docs = fe.documents(split)
        rows = [r for r in manifest["sources"] if r["split"] == split]
        assert len(docs) == len(rows)
        for doc, row in zip(docs, rows):
            assert doc.dtype == np.uint8
            expected = reference_codes(root / row["path"], 16000)
            assert np.array_equal(doc, expected), row["path"]
            assert row["samples"] == len(doc) and row["seconds"] == pytest.approx(len(doc) / 16000)
            seen += 1
    assert seen == 6
    four = next(r for r in manifest["sources"] if r["path"] == "b/four.wav")
    assert four["source_sample_rate"] == 44100 and four["source_seconds"] == pytest.approx(0.2)


def test_second_run_is_a_cache_hit_without_reading_audio(tmp_path, monkeypatch):
    root = _corpus(tmp_path / "corpus")
    first = _frontend(root, tmp_path / "cache")
    first.prepare(progress=False)
    manifest = first.store.path / "manifest.json"
    stamp = manifest.stat().st_mtime_ns

    def no_reading(path):
        raise AssertionError(f"audio was read again: {path}")

    monkeypatch.setattr(audio_io, "read_audio", no_reading)
    second = _frontend(root, tmp_path / "cache")
    second.prepare(progress=False)
    assert second.store.path == first.store.path
    assert manifest.stat().st_mtime_ns == stamp
    assert np.array_equal(second.documents("train")[0], first.documents("train")[0])
    assert len(_stores(tmp_path / "cache")) == 1


def test_changed_setting_or_corpus_prepares_a_new_store(tmp_path):
    root = _corpus(tmp_path / "corpus")
    base = _frontend(root, tmp_path / "cache")
    base.prepare(progress=False)
    rate = _frontend(root, tmp_path / "cache", sample_rate=8000)
    rate.prepare(progress=False)
    assert rate.store.path != base.store.path
    assert rate.store.manifest["sample_rate"] == 8000
    assert rate.store.manifest["seconds"] == pytest.approx(base.store.manifest["seconds"], abs=1e-3)
    norm = _frontend(root, tmp_path / "cache", normalize="rms")
    norm.prepare(progress=False)
    assert norm.store.path not in (base.store.path, rate.store.path)
    # an edited file (new size and modification time) invalidates the store
    write(root / "a" / "one.wav", tone(220.0, 0.35, 8000, seed=9), 8000)
    os.utime(root / "a" / "one.wav", ns=(1, 1))
    edited = _frontend(root, tmp_path / "cache")
    edited.prepare(progress=False)
    assert edited.store.path != base.store.path
    row = next(r for r in edited.store.manifest["sources"] if r["path"] == "a/one.wav")
    assert row["samples"] == 5600  # 0.35 s at 16 kHz
    assert TokenStore.exists(base.store.path)  # old stores stay for other runs


def test_unusable_files_are_skipped_and_listed(tmp_path):
    root = _corpus(tmp_path / "corpus")
    (root / "bad").mkdir()
    (root / "bad" / "empty.wav").write_bytes(b"")
    (root / "bad" / "notes.wav").write_text("meeting notes, not audio")
    write(root / "bad" / "silence.flac", np.zeros(4000, np.float32), 8000)
    good = root / "a" / "one.wav"
    (root / "bad" / "cut.wav").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    # Held-out splits large enough to keep a usable file each (an empty split is refused).
    fe = _frontend(root, tmp_path / "cache", valid_fraction=0.3, test_fraction=0.3)
    fe.prepare(progress=False)
    skipped = {s["path"]: s["reason"] for s in fe.store.manifest["skipped"]}
    assert set(skipped) == {"bad/empty.wav", "bad/notes.wav", "bad/silence.flac", "bad/cut.wav"}
    assert "empty" in skipped["bad/empty.wav"]
    assert "unreadable" in skipped["bad/notes.wav"]
    assert "silent" in skipped["bad/silence.flac"]
    assert "truncated" in skipped["bad/cut.wav"]
    assert sum(len(fe.documents(s)) for s in SPLITS) == 6
    assert {r["path"] for r in fe.store.manifest["sources"]}.isdisjoint(skipped)
    on_disk = json.loads((fe.store.path / "manifest.json").read_text())
    assert on_disk["skipped"] == fe.store.manifest["skipped"]


def test_corpus_without_usable_audio_is_a_data_error(tmp_path):
    root = tmp_path / "corpus"
    write(root / "quiet.wav", np.zeros(800, np.float32), 8000)
    (root / "broken.wav").write_text("no")
    (root / "empty.wav").write_bytes(b"")
    with pytest.raises(DataError, match=str(root)) as info:
        _frontend(root, tmp_path / "cache").prepare(progress=False)
    assert "none of its 3 audio files is usable" in str(info.value)
    assert _stores(tmp_path / "cache") == []  # no half-written store


def test_missing_root_and_folder_without_audio(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "absent")):
        _frontend(tmp_path / "absent", tmp_path / "cache").prepare(progress=False)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    with pytest.raises(DataError, match=str(tmp_path / "texts")) as info:
        _frontend(tmp_path / "texts", tmp_path / "cache").documents("train")
    assert str(info.value) == (f"data.root={tmp_path / 'texts'}: no audio files found (looked for .aif, .aifc, "
                               ".aiff, .au, .caf, .flac, .mp3, .oga, .ogg, .opus, .rf64, .snd, .w64, .wav, .wv); "
                               "point data.root at the folder that holds them")


def test_max_files_caps_the_corpus(tmp_path):
    root = tmp_path / "corpus"
    for i in range(30):
        write(root / f"c{i:02d}.wav", tone(200.0 + i, 0.05, 8000, seed=i), 8000)
    fe = _frontend(root, tmp_path / "cache", sample_rate=8000, max_files=10)
    counts = fe.store.manifest["counts"]
    assert sum(counts[s]["utterances"] for s in SPLITS) == 10
    assert all(counts[s]["utterances"] >= 1 for s in SPLITS)
