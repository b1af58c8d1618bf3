"""ct-sample's options and outputs: nonsense values are one line before any
sampling, the output path is checked before sampling, files are named as
asked (never folders named like files), the default never overwrites, and
an audio file holds exactly the samples asked for."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf
import torch

from ct_audio.config import AudioSampleRequest
from ct_core.errors import ConfigError

from tests.conftest import run_cli
from tests.reliability.conftest import (
    AUDIO, assert_one_line_error, read_only, run_unprivileged, untrained_checkpoint,
)


@pytest.fixture(scope="module")
def audio_checkpoint(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("audio") / "run" / "checkpoints" / "last.pt", AUDIO)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_temperature_must_be_a_number_at_least_zero(checkpoint, tmp_path, value):
    proc = run_cli("ct-sample", str(checkpoint), "--temperature", value, "--tokens", "4",
                   "--out", str(tmp_path / "s.txt"), check=False)
    assert_one_line_error(proc, "--temperature", ">= 0")
    assert not (tmp_path / "s.txt").exists()


@pytest.mark.parametrize("value, needle", [("1e12", "at most 3600"), ("0", "positive"), ("nan", "positive"),
                                           ("-2", "positive")])
def test_audio_length_is_bounded(value, needle):
    with pytest.raises(ConfigError) as err:
        AudioSampleRequest(seconds=float(value)).validate()
    assert str(err.value).startswith("--seconds") and needle in str(err.value)


def test_an_endless_request_is_refused_at_once(audio_checkpoint, tmp_path):
    proc = run_cli("ct-sample", str(audio_checkpoint), "--seconds", "1e12", "--out", str(tmp_path / "a.wav"),
                   check=False, timeout=120)
    assert_one_line_error(proc, "--seconds", "at most 3600")
    assert list(tmp_path.iterdir()) == []


def test_a_wav_holds_exactly_the_samples_asked_for(audio_checkpoint, tmp_path):
    run_cli("ct-sample", str(audio_checkpoint), "--seconds", "0.05", "--out", str(tmp_path / "a.wav"))
    info = sf.info(str(tmp_path / "a.wav"))
    assert (info.frames, info.samplerate) == (400, 8000)  # not 401: the start token is not audio


def test_audio_output_must_be_wav(audio_checkpoint, tmp_path):
    proc = run_cli("ct-sample", str(audio_checkpoint), "--seconds", "0.01", "--out", str(tmp_path / "x.mp3"),
                   check=False)
    assert_one_line_error(proc, "x.mp3", ".wav")
    assert list(tmp_path.iterdir()) == []


def test_several_streams_named_like_a_file_go_to_a_folder_without_its_suffix(checkpoint, tmp_path):
    run_cli("ct-sample", str(checkpoint), "--batch", "2", "--tokens", "4", "--out", str(tmp_path / "two.txt"))
    assert not (tmp_path / "two.txt").exists()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["sample_000.txt", "sample_001.txt"]


def test_the_default_output_is_new_each_time_beside_the_run(checkpoint):
    samples = checkpoint.parent.parent / "samples"
    first = run_cli("ct-sample", str(checkpoint), "--tokens", "4", "--seed", "1")
    second = run_cli("ct-sample", str(checkpoint), "--tokens", "4", "--seed", "2")
    written = sorted(samples.iterdir())
    assert len(written) == 2 and all(p.name.startswith("sample_") and p.suffix == ".txt" for p in written)
    assert {f"wrote {p}" for p in written} == {first.stderr.splitlines()[-1], second.stderr.splitlines()[-1]}
    assert [len(p.read_text().split()) for p in written] == [4, 4]  # the start token is not a sample


def test_the_default_output_of_a_loose_checkpoint_is_beside_it(checkpoint, tmp_path):
    loose = tmp_path / "elsewhere" / "model.pt"
    loose.parent.mkdir()
    shutil.copyfile(checkpoint, loose)
    run_cli("ct-sample", str(loose), "--tokens", "4")
    assert [p.parent for p in (tmp_path / "elsewhere" / "samples").iterdir()] == [loose.parent / "samples"]
    assert not (tmp_path / "samples").exists()


def test_help_states_the_default_output(checkpoint):
    out = " ".join(run_cli("ct-sample", str(checkpoint), "--help").stdout.split())
    assert "samples/sample_<date>-<time>" in out and "never" in out


def test_an_unwritable_output_fails_before_sampling(checkpoint, tmp_path):
    folder = read_only(tmp_path / "ro")
    # A million tokens would take many minutes: the error must come first.
    proc = run_unprivileged("ct-sample", str(checkpoint), "--tokens", "1000000", "--out", str(folder / "s.txt"),
                            timeout=120)
    assert_one_line_error(proc, "--out", "ermission denied")
    assert proc.stdout == ""


def test_an_output_under_a_file_is_one_line(checkpoint, tmp_path):
    (tmp_path / "plain").write_text("x")
    proc = run_cli("ct-sample", str(checkpoint), "--tokens", "1000000", "--out", str(tmp_path / "plain" / "s.txt"),
                   check=False, timeout=120)
    assert_one_line_error(proc, "--out", "not a folder")


def test_the_checkpoint_is_never_an_output(checkpoint):
    before = checkpoint.read_bytes()
    proc = run_cli("ct-sample", str(checkpoint), "--tokens", "4", "--out", str(checkpoint), check=False)
    assert_one_line_error(proc, "--out", "last.pt")
    assert checkpoint.read_bytes() == before


def test_device_names_are_one_line(checkpoint, tmp_path):
    proc = run_cli("ct-sample", str(checkpoint), "--tokens", "4", "--device", "gpu0", check=False)
    assert_one_line_error(proc, "--device gpu0", "--device auto, cpu")
    if not torch.cuda.is_available():
        proc = run_cli("ct-sample", str(checkpoint), "--tokens", "4", "--device", "cuda", check=False)
        assert_one_line_error(proc, "--device cuda", "no CUDA device", "--device cpu")


def test_an_existing_output_file_is_replaced_only_with_force(checkpoint, tmp_path):
    earlier = tmp_path / "story.txt"
    earlier.write_text("an earlier sample")
    proc = run_cli("ct-sample", str(checkpoint), "--tokens", "1000000", "--out", str(earlier), check=False,
                   timeout=120)  # refused before sampling: a million tokens would take minutes
    assert_one_line_error(proc, f"--out={earlier} exists", "--force")
    assert earlier.read_text() == "an earlier sample"

    run_cli("ct-sample", str(checkpoint), "--tokens", "4", "--out", str(earlier), "--force")
    assert len(earlier.read_text().split()) == 4


def test_earlier_samples_in_an_output_folder_need_force(audio_checkpoint, tmp_path):
    folder = tmp_path / "samples"
    run_cli("ct-sample", str(audio_checkpoint), "--batch", "2", "--seconds", "0.01", "--out", str(folder))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ["sample_000.png", "sample_000.wav", "sample_001.png", "sample_001.wav"]
    (folder / "sample_000.wav").unlink()  # the spectrogram beside it is an earlier sample too
    proc = run_cli("ct-sample", str(audio_checkpoint), "--batch", "2", "--seconds", "0.01", "--seed", "5",
                   "--out", str(folder), check=False)
    assert_one_line_error(proc, f"--out={folder / 'sample_000.png'} exists", "--force")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {k: v for k, v in before.items()
                                                                  if k != "sample_000.wav"}
    run_cli("ct-sample", str(audio_checkpoint), "--batch", "2", "--seconds", "0.01", "--seed", "5",
            "--out", str(folder), "--force")
    assert (folder / "sample_001.wav").read_bytes() != before["sample_001.wav"]
