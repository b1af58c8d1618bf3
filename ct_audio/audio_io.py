"""Reading and preprocessing audio files into mono waveforms at the model's rate.

Every waveform the model sees, at preparation and as a priming clip, goes
through :class:`Preprocessor`: read (anything libsndfile reads: wav, flac,
ogg, aiff, ...; 8/16/24/32-bit integer or float) -> mono -> resample ->
silence check -> optional trim -> optional loudness normalisation.

A file that cannot be used raises :class:`UnusableAudio`, whose ``reason``
ends up in the manifest's list of skipped files.

Example::

    pre = Preprocessor(sample_rate=24000, normalize="rms")
    clip = pre.load("speech.flac")      # clip.wave: float32 [T] in [-1, 1]
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from ct_core.errors import ConfigError, DataError

#: File name endings treated as audio when scanning folders (lower case).
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
     ".au", ".snd", ".caf", ".w64", ".rf64", ".wv"}
)

NORMALIZE_MODES = ("none", "peak", "rms")

# libsndfile notes a data chunk longer than the file as
# "data : 32000 (should be 15978)" in its header log, then silently reads the
# shorter remainder; that is the only trace a truncated WAV/AIFF leaves.
_TRUNCATED_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class UnusableAudio(DataError):
    """An audio file that is unreadable, empty, truncated or silent."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def db_to_amplitude(db: float) -> float:
    """Amplitude (full scale = 1) of a level in dBFS."""
    return float(10.0 ** (db / 20.0))


def read_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """The file's samples downmixed to mono, float32 ``[T]`` in [-1, 1], and
    its sample rate. Integer formats are scaled by libsndfile (int16 / 32768).

    Raises :class:`UnusableAudio` for a file that is missing, empty, not
    audio, truncated, corrupt or contains non-finite samples.
    """
    path = Path(path)
    if path.is_dir():
        raise UnusableAudio(path, "is a folder; give an audio file")
    if not path.is_file():
        raise UnusableAudio(path, "file not found")
    if path.stat().st_size == 0:
        raise UnusableAudio(path, "empty file (0 bytes)")
    try:
        f = sf.SoundFile(os.fsencode(path))  # bytes: a str name must be ASCII under an ASCII locale
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise UnusableAudio(path, f"unreadable ({_short(e)})") from None
    with f:
        declared = f.frames
        truncated = _TRUNCATED_CHUNK.search(f.extra_info)
        if truncated:
            raise UnusableAudio(
                path, f"truncated (header declares {truncated.group(2)} data bytes, "
                      f"file holds {truncated.group(3)})")
        try:
            data = f.read(dtype="float32", always_2d=True)  # [T, C]
        except (sf.LibsndfileError, RuntimeError) as e:
            raise UnusableAudio(path, f"corrupt or truncated ({_short(e)})") from None
        rate = f.samplerate
        # MP3 frame counts are estimates (encoder delay, VBR headers), not promises.
        exact_count = f.format != "MPEG"
    if data.shape[0] == 0:
        raise UnusableAudio(path, "empty (no audio frames)")
    if exact_count and 0 < declared != data.shape[0]:
        raise UnusableAudio(path, f"truncated (header declares {declared} frames, read {data.shape[0]})")
    if not np.isfinite(data).all():
        raise UnusableAudio(path, "contains NaN or infinite samples")
    # Downmix by averaging so a mono signal duplicated on two channels is unchanged.
    return data.mean(axis=1, dtype=np.float32), rate  # [T]


def _short(e: Exception) -> str:
    """libsndfile's message without the repeated file name."""
    return str(e).split(": ", 1)[-1].strip() if ": " in str(e) else str(e).strip()


def resampled_length(n: int, orig_sr: int, target_sr: int) -> int:
    """``round(n * target_sr / orig_sr)`` with halves rounded up, in exact
    integer arithmetic (float rounding makes some resamplers emit one extra
    sample, e.g. 22,050 -> 24,001 at 22.05 -> 24 kHz)."""
    return (2 * n * target_sr + orig_sr) // (2 * orig_sr)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``wave`` ``[T]`` at ``target_sr``, exactly :func:`resampled_length` long.

    soxr (through librosa, ``soxr_hq``) rather than torchaudio's windowed
    sinc: it is a band-limited high-quality resampler, handles awkward ratios
    such as 22,050 -> 24,000 Hz without building a large polyphase kernel,
    and is several times faster on CPU, which matters when a whole corpus
    is resampled on a laptop.
    """
    if orig_sr == target_sr:
        return np.asarray(wave, dtype=np.float32)
    out = librosa.resample(np.asarray(wave, dtype=np.float32), orig_sr=orig_sr,
                           target_sr=target_sr, res_type="soxr_hq")
    return librosa.util.fix_length(out, size=resampled_length(len(wave), orig_sr, target_sr))


def trim_silence(wave: np.ndarray, top_db: float) -> np.ndarray:
    """``wave`` ``[T]`` without leading and trailing frames quieter than
    ``top_db`` below its loudest frame (librosa's energy-based trim)."""
    trimmed, _ = librosa.effects.trim(wave, top_db=top_db)
    return trimmed


def normalize(wave: np.ndarray, mode: str, peak_db: float, rms_db: float) -> np.ndarray:
    """Per-utterance loudness normalisation of ``wave`` ``[T]``.

    ``peak``: scale so the largest |sample| is ``peak_db`` dBFS. ``rms``:
    scale so the RMS level is ``rms_db`` dBFS, then clip to [-1, 1] (speech
    at -20 dBFS RMS rarely clips). Either evens out the recording levels of
    different speakers, so quiet corpora use more than a few μ-law classes.
    """
    if mode == "none":
        return wave
    if mode == "peak":
        gain = db_to_amplitude(peak_db) / float(np.max(np.abs(wave)))
    elif mode == "rms":
        gain = db_to_amplitude(rms_db) / float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    else:
        raise ConfigError(f"data.normalize={mode!r} is unknown; choose one of {NORMALIZE_MODES}")
    return np.clip(wave * np.float32(gain), -1.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Clip:
    """One preprocessed utterance."""

    wave: np.ndarray  # [T] float32 at the target rate
    source_rate: int
    source_frames: int


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """The waveform pipeline shared by preparation and priming clips.

    ``silence_db``: a file whose peak is below this level (dBFS) is skipped as
    silent; it is checked before trimming and normalisation, which would
    otherwise amplify a silent file's noise floor into "speech".
    """

    sample_rate: int
    trim_silence: bool = False
    top_db: float = 40.0
    normalize: str = "none"
    peak_db: float = -1.0
    rms_db: float = -20.0
    silence_db: float = -60.0

    def load(self, path: Path | str) -> Clip:
        """Read and preprocess ``path``; :class:`UnusableAudio` if it cannot
        be used."""
        source, rate = read_audio(path)  # [T_src]
        peak = float(np.max(np.abs(source)))
        if peak < db_to_amplitude(self.silence_db):
            level = "digital silence" if peak == 0 else f"peak {20 * np.log10(peak):.1f} dBFS"
            raise UnusableAudio(path, f"silent ({level}, below silence_db={self.silence_db:g})")
        wave = resample(source, rate, self.sample_rate)  # [T]
        if self.trim_silence:
            wave = trim_silence(wave, self.top_db)
        if wave.size == 0 or not np.any(wave):
            raise UnusableAudio(path, f"no samples left at {self.sample_rate} Hz "
                                      f"({len(source)} frames at {rate} Hz)")
        wave = normalize(wave, self.normalize, self.peak_db, self.rms_db)
        return Clip(wave=wave, source_rate=rate, source_frames=len(source))
