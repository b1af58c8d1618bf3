"""8-bit μ-law companding of waveforms in [-1, 1].

μ-law maps an amplitude ``x`` to ``F(x) = sign(x) ln(1 + μ|x|) / ln(1 + μ)``
and quantises ``F(x)`` uniformly into ``μ + 1`` classes, so quiet samples get
fine steps and loud ones coarse steps. With μ = 255 that is 256 classes, one
byte per sample, the alphabet of the waveform language model.

torchaudio's functional μ-law is the single implementation used everywhere
(preparation, priming clips, decoding), so codes on disk and codes from a
prompt can never disagree. Its convention: class ``c`` decodes to
``F^-1(2c/μ - 1)``; -1 encodes to 0, +1 to μ and 0 to ``(μ + 1) // 2``
(128 for μ = 255).

Example::

    codes = mulaw_encode(np.array([-1.0, 0.0, 1.0]))    # [0, 128, 255]
    wave = mulaw_decode(codes)                          # ≈ [-1, 0, 1]
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional as AF

#: The paper's quantisation: 8 bits, μ = 255.
DEFAULT_MU = 255


def mulaw_encode(wave: np.ndarray, mu: int = DEFAULT_MU) -> np.ndarray:
    """μ-law codes (int64, in ``[0, mu]``) of ``wave`` ``[T]`` (float).

    Samples outside [-1, 1] are clipped first: torchaudio's formula would
    otherwise produce classes past ``mu``.
    """
    x = torch.from_numpy(np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0))  # [T]
    return AF.mu_law_encoding(x, mu + 1).numpy()


def mulaw_decode(codes: np.ndarray, mu: int = DEFAULT_MU) -> np.ndarray:
    """Waveform (float32 in [-1, 1]) of μ-law ``codes`` ``[...]`` (integers)."""
    c = torch.from_numpy(np.asarray(codes, dtype=np.int64))
    return AF.mu_law_decoding(c, mu + 1).to(torch.float32).numpy()

