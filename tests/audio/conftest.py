"""Tiny audio files and corpora the audio tests write into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

#: The real speech samples, beside the repository (``<repo>/../shared/data/speech``).
SPEECH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech"


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5, seed: int | None = None) -> np.ndarray:
    """A sine ``[round(seconds * sr)]`` float32, plus a little noise when
    ``seed`` is given (so files of the same tone differ)."""
    t = np.arange(round(seconds * sr)) / sr
    wave = amp * np.sin(2 * np.pi * freq * t)
    if seed is not None:
        wave += 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return wave.astype(np.float32)


def write(path: Path, wave: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    """Write ``wave`` ``[T]`` or ``[T, C]``; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype=subtype)
    return path


def reference_codes(path: Path, sample_rate: int) -> np.ndarray:
    """μ-law codes of ``path`` computed without ct_audio: soundfile read, mean
    of channels, soxr resampling to round(n * new / old) samples, torchaudio μ-law."""
    import librosa
    import torch
    import torchaudio.functional as AF

    data, sr = sf.read(path, dtype="float32", always_2d=True)
    wave = data.mean(axis=1)
    if sr != sample_rate:
        n = int(np.floor(len(wave) * sample_rate / sr + 0.5))
        wave = librosa.resample(wave, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")[:n]
        assert len(wave) == n
    return AF.mu_law_encoding(torch.from_numpy(np.clip(wave, -1, 1)), 256).numpy()


@pytest.fixture
def speech_dir() -> Path:
    if not SPEECH.is_dir():
        pytest.skip(f"real speech samples not found at {SPEECH} (clone shared/ beside the repository)")
    return SPEECH
