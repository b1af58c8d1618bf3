"""Transformer-XL relative positions: sinusoidal encodings and the rel-shift.

Keys are laid out ``[cmem (C); mem (M); segment so far]`` and the ``T``
queries are always the last ``T`` keys. Encodings are indexed by *distance*
in descending order, ``R[r]`` encodes distance ``K - 1 - r`` (as in
Transformer-XL), so after :func:`rel_shift` entry ``[i, j]`` holds the score
of query ``i`` against the encoding of its distance to key ``j``. Compressed
slots therefore get distances continuing past the memory.

Example::

    R = sinusoid_positions(K, d_model)        # [K, D], distances K-1 .. 0
    bd = rel_shift(scores_against_R)          # [B, H, T, K] aligned with keys
"""

from __future__ import annotations

import torch
from torch import Tensor


def sinusoid_positions(n_keys: int, d_model: int, device=None, dtype=torch.float32) -> Tensor:
    """Sinusoidal encodings of distances ``n_keys - 1, ..., 1, 0``: ``[n_keys, d_model]``."""
    distance = torch.arange(n_keys - 1, -1, -1, device=device, dtype=torch.float32)  # [K]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d_model, 2, device=device, dtype=torch.float32) / d_model))
    angles = distance[:, None] * inv_freq[None, :]  # [K, D/2]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def rel_shift(x: Tensor) -> Tensor:
    """Align scores against descending-distance encodings with the keys.

    ``x``: ``[..., T, K]`` where ``x[..., i, r]`` scores query ``i`` against
    the encoding of distance ``K - 1 - r``. Returns ``out`` with
    ``out[..., i, j] = x[..., i, j + T - 1 - i]`` wherever that index is
    ``< K`` (every key query ``i`` may see: ``j <= K - T + i``); the entries
    for future keys hold garbage and must be masked.

    Zero-padding one column and re-viewing shifts row ``i`` left by
    ``T - 1 - i`` (Transformer-XL's trick). A zero-copy strided view would do
    the same forward, but its generic backward (index_add over computed
    offsets) costs far more than these two copies.
    """
    *lead, t, k = x.shape
    padded = torch.nn.functional.pad(x, (1, 0))  # [..., T, K + 1]
    padded = padded.reshape(*lead, k + 1, t)
    return padded[..., 1:, :].reshape(*lead, t, k)
