"""Corpus readers on tiny trees, and deterministic, disjoint splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ct_audio.corpora import list_corpus
from ct_audio.splits import assign_splits, cap_files
from ct_core.errors import ConfigError, DataError
from ct_core.data.frontend import SPLITS

from .conftest import tone, write

SR = 8000


def _clip(seed: int) -> np.ndarray:
    return tone(200.0 + 10 * seed, 0.05, SR, seed=seed)


def _librispeech(root: Path, subsets: dict[str, list[str]], transcripts: bool) -> Path:
    """``subsets``: subset name -> speakers; two utterances per speaker."""
    for subset, speakers in subsets.items():
        for spk in speakers:
            chapter = root / "LibriSpeech" / subset / spk / "100"
            lines = []
            for utt in range(2):
                uid = f"{spk}-100-{utt:04d}"
                write(chapter / f"{uid}.flac", _clip(utt), SR)
                lines.append(f"{uid} WORDS OF {uid}")
            if transcripts:
                (chapter / f"{spk}-100.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def _speakers(splits, split):
    return {u.speaker for u in splits[split]}


def _assert_partition(splits, utterances):
    ids = [u.id for s in SPLITS for u in splits[s]]
    assert sorted(ids) == sorted(u.id for u in utterances)  # every utterance exactly once


@pytest.mark.parametrize("transcripts", [True, False])
def test_librispeech_reader(tmp_path, transcripts):
    _librispeech(tmp_path, {"test-other": ["11", "22", "33", "44", "55"]}, transcripts)
    write(tmp_path / "LibriSpeech" / "test-other" / "11" / "100" / "stray.flac", _clip(0), SR)
    listing = list_corpus("librispeech", tmp_path)
    assert [u.id for u in listing.utterances] == [
        f"{s}-100-{u:04d}" for s in ("11", "22", "33", "44", "55") for u in range(2)]
    assert {u.speaker for u in listing.utterances} == {"11", "22", "33", "44", "55"}
    assert {u.split for u in listing.utterances} == {"test"}
    first = listing.utterances[0]
    assert first.text == ("WORDS OF 11-100-0000" if transcripts else None)
    assert listing.skipped == [("LibriSpeech/test-other/11/100/stray.flac",
                                "name is not <speaker>-<chapter>-<utterance>")]
    # one official subset only: speaker-disjoint split instead
    splits, rule = assign_splits(listing.utterances, 0.2, 0.2, seed=0)
    assert rule == "speaker-disjoint"
    assert all(splits[s] for s in SPLITS)
    assert not _speakers(splits, "train") & _speakers(splits, "valid")
    assert not _speakers(splits, "train") & _speakers(splits, "test")
    assert not _speakers(splits, "valid") & _speakers(splits, "test")
    _assert_partition(splits, listing.utterances)


def test_librispeech_official_subsets_become_the_splits(tmp_path):
    _librispeech(tmp_path, {"train-clean-100": ["1", "2"], "dev-clean": ["3"], "test-clean": ["4"]}, True)
    listing = list_corpus("librispeech", tmp_path / "LibriSpeech")
    splits, rule = assign_splits(listing.utterances, 0.3, 0.3, seed=0)
    assert rule == "official"
    assert _speakers(splits, "train") == {"1", "2"}
    assert _speakers(splits, "valid") == {"3"} and _speakers(splits, "test") == {"4"}


def test_speaker_split_is_deterministic_and_seeded(tmp_path):
    _librispeech(tmp_path, {"dev-other": [str(i) for i in range(10, 30)]}, False)
    utts = list_corpus("librispeech", tmp_path).utterances
    a, _ = assign_splits(utts, 0.1, 0.1, seed=0)
    b, _ = assign_splits(list(reversed(utts)), 0.1, 0.1, seed=0)  # input order is irrelevant
    assert {s: [u.id for u in a[s]] for s in SPLITS} == {s: [u.id for u in b[s]] for s in SPLITS}
    assert len(_speakers(a, "test")) == 2 and len(_speakers(a, "valid")) == 2
    assert [u.id for u in a["test"]] == sorted(u.id for u in a["test"])
    other = [assign_splits(utts, 0.1, 0.1, seed=s)[0]["test"] for s in range(1, 6)]
    assert any(_speakers({"t": o}, "t") != _speakers(a, "test") for o in other)


def test_ljspeech_reader(tmp_path):
    rows = [f"LJ001-000{i}|Text {i} \"quoted\"|text {i} normalized" for i in range(1, 7)]
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    for i in range(1, 6):  # LJ001-0006 is missing
        write(tmp_path / "wavs" / f"LJ001-000{i}.wav", _clip(i), SR)
    listing = list_corpus("ljspeech", tmp_path)
    assert [u.id for u in listing.utterances] == [f"LJ001-000{i}" for i in range(1, 6)]
    assert listing.utterances[0].text == "text 1 normalized"
    assert listing.utterances[0].path == tmp_path / "wavs" / "LJ001-0001.wav"
    assert listing.skipped == [("wavs/LJ001-0006.wav", "listed in metadata.csv but not found")]
    splits, rule = assign_splits(listing.utterances, 0.2, 0.2, seed=0)
    assert rule == "by-utterance"  # one speaker
    assert [len(splits[s]) for s in SPLITS] == [3, 1, 1]
    _assert_partition(splits, listing.utterances)


def test_ljspeech_without_metadata_is_a_data_error(tmp_path):
    write(tmp_path / "wavs" / "LJ001-0001.wav", _clip(0), SR)
    with pytest.raises(DataError, match="metadata.csv"):
        list_corpus("ljspeech", tmp_path)


@pytest.mark.parametrize("audio_dir", ["wav48", "wavs"])
def test_vctk_reader(tmp_path, audio_dir):
    for spk in ("p225", "p226", "p227", "p228"):
        for utt in (1, 2):
            write(tmp_path / audio_dir / spk / f"{spk}_{utt:03d}.wav", _clip(utt), SR)
        (tmp_path / "txt" / spk).mkdir(parents=True)
        (tmp_path / "txt" / spk / f"{spk}_001.txt").write_text("Please call Stella.\n")
    write(tmp_path / audio_dir / "loose.wav", _clip(0), SR)
    listing = list_corpus("vctk", tmp_path)
    assert len(listing.utterances) == 8
    assert listing.utterances[0].id == "p225/p225_001" and listing.utterances[0].speaker == "p225"
    assert listing.utterances[0].text == "Please call Stella." and listing.utterances[1].text is None
    assert listing.skipped == [(f"{audio_dir}/loose.wav", "not inside a <speaker>/ folder")]
    splits, rule = assign_splits(listing.utterances, 0.25, 0.25, seed=3)
    assert rule == "speaker-disjoint"
    assert [len(_speakers(splits, s)) for s in SPLITS] == [2, 1, 1]
    _assert_partition(splits, listing.utterances)


def test_vctk_092_keeps_mic1_only(tmp_path):
    for spk in ("p225", "p226", "p227"):
        for mic in (1, 2):
            write(tmp_path / "wav48_silence_trimmed" / spk / f"{spk}_001_mic{mic}.flac", _clip(mic), SR)
    listing = list_corpus("vctk", tmp_path)
    assert [u.id for u in listing.utterances] == [f"{s}/{s}_001_mic1" for s in ("p225", "p226", "p227")]


def test_fsdd_reader_uses_the_official_split(tmp_path):
    for spk in ("george", "jackson"):
        for digit in (3, 7):
            for take in range(12):
                write(tmp_path / "recordings" / f"{digit}_{spk}_{take}.wav", _clip(take), SR)
    write(tmp_path / "recordings" / "notes.wav", _clip(0), SR)
    listing = list_corpus("fsdd", tmp_path)
    assert len(listing.utterances) == 48
    assert listing.skipped == [("recordings/notes.wav", "name is not {digit}_{speaker}_{take}.wav")]
    splits, rule = assign_splits(listing.utterances, 0.05, 0.05, seed=0)
    assert rule == "official"
    take = lambda u: int(u.id.rsplit("_", 1)[1])  # noqa: E731
    assert sorted({take(u) for u in splits["test"]}) == [0, 1, 2, 3, 4]
    assert sorted({take(u) for u in splits["valid"]}) == [5, 6, 7, 8, 9]
    assert sorted({take(u) for u in splits["train"]}) == [10, 11]
    assert {u.text for u in splits["test"]} == {"3", "7"}  # the spoken digit
    assert list_corpus("fsdd", tmp_path / "recordings").utterances == listing.utterances


def test_folder_reader_is_recursive_and_splits_deterministically(tmp_path):
    for i in range(20):
        write(tmp_path / f"group{i % 3}" / "deeper" / f"clip{i:02d}.flac", _clip(i), SR)
    (tmp_path / "group0" / "readme.txt").write_text("not audio")
    write(tmp_path / ".hidden" / "x.wav", _clip(0), SR)
    listing = list_corpus("folder", tmp_path)
    assert len(listing.utterances) == 20
    assert listing.utterances[0].id == "group0/deeper/clip00"
    assert all(u.speaker is None for u in listing.utterances)
    a, rule = assign_splits(listing.utterances, 0.1, 0.1, seed=0)
    b, _ = assign_splits(listing.utterances, 0.1, 0.1, seed=0)
    assert rule == "by-utterance" and a == b
    assert [len(a[s]) for s in SPLITS] == [16, 2, 2]
    _assert_partition(a, listing.utterances)


def test_missing_root_and_empty_folder_name_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        list_corpus("folder", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(DataError, match=str(tmp_path / "empty")) as info:
        list_corpus("librispeech", tmp_path / "empty")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="data.root"):
        list_corpus("vctk", None)
    with pytest.raises(ConfigError, match="data.corpus"):
        list_corpus("timit", tmp_path)


def test_cap_files_keeps_every_split_and_respects_the_cap(tmp_path):
    for i in range(50):
        write(tmp_path / f"c{i:02d}.wav", _clip(i), SR)
    utts = list_corpus("folder", tmp_path).utterances
    splits, _ = assign_splits(utts, 0.1, 0.1, seed=0)
    capped = cap_files(splits, 6, seed=0)
    assert sum(len(v) for v in capped.values()) == 6
    assert all(capped[s] for s in SPLITS)
    for s in SPLITS:  # a capped utterance keeps its split
        assert {u.id for u in capped[s]} <= {u.id for u in splits[s]}
    assert cap_files(splits, 6, seed=0) == capped
    assert cap_files(splits, None, seed=0) == splits
