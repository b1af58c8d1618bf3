"""Real speech: the shared samples (FSDD, LibriSpeech, LJ Speech) and the bundled demo."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ct_audio.corpora import DEMO_ROOT, list_corpus
from ct_core.data.frontend import SPLITS, build_frontend


def _prepare(tmp_path, **data):
    fe = build_frontend({"frontend": "audio", "cache_dir": str(tmp_path / "cache"), **data})
    fe.prepare(progress=False)
    return fe, fe.store.manifest


def _frames(speech_dir) -> dict[str, int]:
    """Frame count of every file, from the samples' own MANIFEST.tsv."""
    with open(speech_dir / "MANIFEST.tsv", newline="") as f:
        return {row["path"]: int(row["frames"]) for row in csv.DictReader(f, delimiter="\t")}


def test_fsdd_prepares_with_its_official_split(tmp_path, speech_dir):
    fe, m = _prepare(tmp_path, corpus="fsdd", root=str(speech_dir / "fsdd"),
                     sample_rate=8000, max_files=300)
    assert m["skipped"] == [] and m["split_rule"] == "official"
    assert sum(m["counts"][s]["utterances"] for s in SPLITS) == 300
    assert m["counts"]["test"]["utterances"] == 30  # 300 of 3,000 files: 10 % of each split
    take = {r["id"]: int(r["id"].rsplit("_", 1)[1]) for r in m["sources"]}
    for r in m["sources"]:
        expected = "test" if take[r["id"]] < 5 else "valid" if take[r["id"]] < 10 else "train"
        assert r["split"] == expected
    # 8 kHz files at 8 kHz: no resampling, so lengths equal the files' frames
    frames = _frames(speech_dir)
    for r in m["sources"]:
        assert r["samples"] == frames[f"fsdd/{r['path']}"]
    assert all(len(d) > 1000 for d in fe.documents("test"))
    # the whole listing: 3,000 recordings of 6 speakers, names all valid
    listing = list_corpus("fsdd", speech_dir / "fsdd")
    assert len(listing.utterances) == 3000 and listing.skipped == []
    assert len({u.speaker for u in listing.utterances}) == 6


def test_librispeech_sample_prepares_speaker_disjoint(tmp_path, speech_dir):
    root = speech_dir / "librispeech_sample" / "LibriSpeech"
    fe, m = _prepare(tmp_path, corpus="librispeech", root=str(root), sample_rate=16000,
                     valid_fraction=0.1, test_fraction=0.1)
    assert m["skipped"] == [] and m["split_rule"] == "speaker-disjoint"
    assert sum(m["counts"][s]["utterances"] for s in SPLITS) == 100
    speakers = {s: {r["speaker"] for r in m["sources"] if r["split"] == s} for s in SPLITS}
    assert [len(speakers[s]) for s in SPLITS] == [8, 1, 1]
    assert not (speakers["train"] & speakers["valid"] or speakers["train"] & speakers["test"])
    frames = _frames(speech_dir)
    assert m["seconds"] == pytest.approx(sum(v for k, v in frames.items()
                                             if k.startswith("librispeech_sample/")) / 16000, abs=1e-3)
    assert all(r["text"] is None for r in m["sources"])  # the sample ships no transcripts


def test_ljspeech_sample_resamples_from_22050(tmp_path, speech_dir):
    fe, m = _prepare(tmp_path, corpus="ljspeech", root=str(speech_dir / "ljspeech_sample"),
                     sample_rate=24000)
    assert m["skipped"] == [] and m["split_rule"] == "by-utterance"
    assert sum(m["counts"][s]["utterances"] for s in SPLITS) == 32
    frames = _frames(speech_dir)
    for r in m["sources"]:
        assert r["source_sample_rate"] == 22050
        n = frames[f"ljspeech_sample/{r['path']}"]
        assert r["samples"] == int(np.floor(n * 24000 / 22050 + 0.5))
    codes = np.concatenate(fe.documents("train"))
    # speech in μ-law spreads over most classes, centred near 128 (silence)
    assert len(np.unique(codes)) > 200 and abs(np.median(codes.astype(int)) - 128) <= 3


def test_bundled_demo_sample(tmp_path):
    files = [p for p in DEMO_ROOT.parent.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 5 * 2**20
    readme = (DEMO_ROOT.parent / "README.md").read_text()
    assert "public domain" in readme and "LJ Speech" in readme and "Ito" in readme
    fe, m = _prepare(tmp_path, corpus="demo", sample_rate=8000)
    assert m["skipped"] == [] and m["root"] == str(DEMO_ROOT)
    assert all(m["counts"][s]["utterances"] > 0 for s in SPLITS)
    assert all(len(fe.documents(s)) > 0 and all(len(d) > 8000 for d in fe.documents(s)) for s in SPLITS)
    assert m["seconds"] > 200  # 3.7 minutes of speech
    assert {r["source_sample_rate"] for r in m["sources"]} == {8000}
