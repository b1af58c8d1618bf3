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
    bd = rel_shift_padded(scores_against_0R)  # the same, from scores against [0; R]
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
    for future keys hold other scores and must be masked.

    Transformer-XL's trick: one zero column in front, then
    :func:`rel_shift_padded`. Attention builds the padded scores directly
    (against a zero encoding followed by ``R``), which spares this copy.
    """
    return rel_shift_padded(torch.nn.functional.pad(x, (1, 0)))


def rel_shift_padded(padded: Tensor) -> Tensor:
    """:func:`rel_shift` of scores already in the padded layout.

    ``padded``: contiguous ``[..., T, K + 1]`` whose column 0 is finite (the
    score against a zero encoding) and whose column ``r + 1`` scores query
    ``i`` against distance ``K - 1 - r``. Returns a ``[..., T, K]`` view
    (no copy): entry ``[i, j]`` is element ``T + i·K + j`` of the flattened
    ``[T, K + 1]`` block, which is ``padded[i, j + T - i]`` for every key
    query ``i`` may see and an entry of row ``i + 1`` for future keys. The
    backward of a slice and two views is a zero fill and one copy, unlike a
    generic ``as_strided``, whose backward is an index-add.
    """
    *lead, t, k_plus_1 = padded.shape
    k = k_plus_1 - 1
    return padded.flatten(-2)[..., t : t + t * k].view(*lead, t, k)
