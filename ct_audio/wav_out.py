"""Writing generated audio: 16-bit PCM WAV files and spectrogram pictures.

Both are written atomically (:mod:`ct_core.atomic_write`): a write that
fails is one line naming the file and the reason, and never leaves a cut-off
file under the requested name. Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so
writing samples works on headless machines and never touches a global
figure state or a GUI backend.

Example::

    write_wav(Path("a.wav"), wave, 24000)
    write_spectrogram_png(Path("a.png"), wave, 24000, "sample 0", boundary_s=1.0)
"""

from __future__ import annotations

import os
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ct_core.atomic_write import atomic_path

# Dynamic range shown: quieter bins are drawn as the floor colour.
_TOP_DB = 80.0


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> Path:
    """Write ``wave`` ``[T]`` (float in [-1, 1]) as 16-bit PCM WAV, atomically:
    a write that fails leaves no cut-off WAV under ``path``."""
    path = Path(path)
    # As bytes: soundfile encodes a str name strictly, which fails on a
    # non-ASCII name under an ASCII locale.
    with atomic_path(path) as tmp:
        sf.write(os.fsencode(tmp), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return path


def _stft_sizes(sample_rate: int) -> tuple[int, int]:
    """FFT size of about 32 ms (a power of two) and a hop of a quarter of it,
    the usual resolution for looking at speech formants and pitch."""
    n_fft = 1 << max(6, int(np.ceil(np.log2(0.032 * sample_rate))))
    return n_fft, n_fft // 4


def spectrogram_figure(wave: np.ndarray, sample_rate: int, title: str,
                       boundary_s: float | None = None) -> Figure:
    """Log-magnitude STFT of ``wave`` ``[T]``: time in seconds, frequency in
    kHz, dB relative to the clip's loudest bin. ``boundary_s`` draws a
    vertical line there (where a priming clip ends and generation begins)."""
    n_fft, hop = _stft_sizes(sample_rate)
    seconds = len(wave) / sample_rate
    padded = np.pad(np.asarray(wave, dtype=np.float32), (0, max(0, n_fft - len(wave))))
    mag = np.abs(librosa.stft(padded, n_fft=n_fft, hop_length=hop))  # [n_fft // 2 + 1, frames]
    db = librosa.amplitude_to_db(mag, ref=max(float(mag.max()), 1e-10), top_db=_TOP_DB)

    fig = Figure(figsize=(8, 3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma",
                      extent=(0.0, max(seconds, len(padded) / sample_rate), 0.0, sample_rate / 2000))
    ax.set_xlim(0.0, max(seconds, 1.0 / sample_rate))
    if boundary_s is not None and boundary_s > 0:
        ax.axvline(boundary_s, color="cyan", linestyle="--", linewidth=1.5, label="end of priming clip")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_title(title)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=ax, label="dB")
    return fig


def write_spectrogram_png(path: Path, wave: np.ndarray, sample_rate: int, title: str,
                          boundary_s: float | None = None) -> Path:
    """Save :func:`spectrogram_figure` of ``wave`` ``[T]`` as a PNG, atomically."""
    path = Path(path)
    figure = spectrogram_figure(wave, sample_rate, title, boundary_s)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """The rendered figure as an RGB image ``[H, W, 3]`` uint8 (for TensorBoard)."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
