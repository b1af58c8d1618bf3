"""Reading, downmixing, resampling, trimming, normalising; unusable files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from ct_audio.audio_io import (
    Preprocessor, UnusableAudio, db_to_amplitude, normalize, read_audio, resample, trim_silence,
)
from ct_core.errors import DataError

from .conftest import tone, write


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize("n, old, new", [
    (22050, 22050, 24000), (1000, 22050, 24000), (1001, 22050, 24000), (12345, 16000, 24000),
    (12345, 48000, 8000), (7, 22050, 8000), (8000, 8000, 24000), (44100, 44100, 16000),
])
def test_resample_keeps_duration(n, old, new):
    x = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    y = resample(x, old, new)
    assert y.dtype == np.float32
    assert len(y) == int(np.floor(n * new / old + 0.5))  # round half up


@pytest.mark.parametrize("old, new", [(22050, 24000), (16000, 8000), (8000, 24000), (44100, 16000)])
def test_resample_keeps_a_sines_frequency(old, new):
    x = tone(440.0, 1.0, old)
    y = resample(x, old, new)
    assert abs(_peak_hz(y, new) - 440.0) <= 1.0  # 1 s of signal: 1 Hz bins
    # amplitude survives too (no gain change in the pass band)
    assert abs(np.abs(y[new // 10: -new // 10]).max() - 0.5) < 0.01


def test_resample_same_rate_is_identity():
    x = tone(300.0, 0.1, 16000)
    assert np.array_equal(resample(x, 16000, 16000), x)


def test_stereo_is_downmixed_to_the_mean(tmp_path):
    left = tone(440.0, 0.5, 16000)
    right = np.random.default_rng(0).uniform(-0.3, 0.3, left.size).astype(np.float32)
    path = write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave, sr = read_audio(path)
    assert sr == 16000 and wave.shape == left.shape
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("name, subtype, bits", [
    ("u8.wav", "PCM_U8", 8), ("i16.wav", "PCM_16", 16), ("i24.wav", "PCM_24", 24),
    ("f32.wav", "FLOAT", None), ("i16.flac", "PCM_16", 16), ("i24.flac", "PCM_24", 24),
])
def test_sample_formats_read_equal_within_quantisation(tmp_path, name, subtype, bits):
    x = tone(330.0, 0.5, 16000, amp=0.9)
    wave, sr = read_audio(write(tmp_path / name, x, 16000, subtype=subtype))
    assert sr == 16000 and wave.dtype == np.float32 and wave.shape == x.shape
    step = 0.0 if bits is None else 2.0 ** -(bits - 1)  # one integer step, full scale = 1
    assert np.abs(wave - x).max() <= step + 1e-7


def test_unusable_files_name_their_reason(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n")
    write(tmp_path / "noframes.wav", np.zeros(0, np.float32), 8000)
    good = write(tmp_path / "good.wav", tone(200.0, 0.5, 8000), 8000)
    (tmp_path / "cut.wav").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bad = tone(200.0, 0.1, 8000)
    bad[10] = np.nan
    write(tmp_path / "nan.wav", bad, 8000, subtype="FLOAT")
    expected = {"zero.wav": "empty file", "text.wav": "unreadable", "noframes.wav": "empty",
                "cut.wav": "truncated", "nan.wav": "NaN", "missing.wav": "not found"}
    for name, reason in expected.items():
        with pytest.raises(UnusableAudio) as info:
            read_audio(tmp_path / name)
        assert reason in info.value.reason
        assert isinstance(info.value, DataError)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_truncated_flac_is_reported(tmp_path):
    good = write(tmp_path / "good.flac", tone(200.0, 1.0, 16000, seed=1), 16000)
    (tmp_path / "cut.flac").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnusableAudio, match="truncated|corrupt"):
        read_audio(tmp_path / "cut.flac")


def test_silent_file_is_rejected_by_the_preprocessor(tmp_path):
    pre = Preprocessor(sample_rate=8000)
    with pytest.raises(UnusableAudio, match="silent"):
        pre.load(write(tmp_path / "zeros.wav", np.zeros(8000, np.float32), 8000))
    # -70 dBFS hum is below the default -60 dBFS threshold, -50 dBFS is not
    with pytest.raises(UnusableAudio, match="silent"):
        pre.load(write(tmp_path / "hum.wav", tone(50.0, 0.5, 8000, amp=db_to_amplitude(-70)), 8000))
    clip = pre.load(write(tmp_path / "quiet.wav", tone(50.0, 0.5, 8000, amp=db_to_amplitude(-50)), 8000))
    assert clip.wave.size == 4000


def test_normalize_peak_and_rms():
    x = tone(440.0, 0.5, 8000, amp=0.05)
    peak = normalize(x, "peak", peak_db=-1.0, rms_db=-20.0)
    assert np.abs(peak).max() == pytest.approx(db_to_amplitude(-1.0), rel=1e-5)
    rms = normalize(x, "rms", peak_db=-1.0, rms_db=-20.0)
    assert np.sqrt(np.mean(rms.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-4)
    assert np.array_equal(normalize(x, "none", -1.0, -20.0), x)
    loud = normalize(x, "rms", peak_db=-1.0, rms_db=0.0)  # would exceed full scale
    assert np.abs(loud).max() <= 1.0


def test_trim_silence_cuts_leading_and_trailing_silence():
    sr = 8000
    speech = tone(300.0, 1.0, sr)
    x = np.concatenate([np.zeros(sr // 2, np.float32), speech, np.zeros(sr // 2, np.float32)])
    y = trim_silence(x, top_db=40.0)
    assert sr <= len(y) <= sr + 2 * 2048  # librosa trims in whole 2048-sample frames
    assert len(y) < len(x) - sr // 2


def test_preprocessor_resamples_trims_and_normalises(tmp_path):
    sr = 16000
    x = np.concatenate([np.zeros(sr, np.float32), tone(300.0, 1.0, sr, amp=0.1)])
    path = write(tmp_path / "a.flac", x, sr)
    clip = Preprocessor(sample_rate=8000, trim_silence=True, normalize="peak").load(path)
    assert clip.source_rate == sr and clip.source_frames == 2 * sr
    assert 8000 <= clip.wave.size <= 8000 + 2 * 2048
    assert np.abs(clip.wave).max() == pytest.approx(db_to_amplitude(-1.0), rel=1e-4)
    plain = Preprocessor(sample_rate=8000).load(path)
    assert plain.wave.size == 16000
    assert sf.info(path).samplerate == sr  # the source file is untouched
