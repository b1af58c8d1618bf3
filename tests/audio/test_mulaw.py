"""μ-law: class edges, round-trip error bound, fixed points."""

from __future__ import annotations

import numpy as np

from ct_audio.mulaw import mulaw_decode, mulaw_encode

MU = 255


def _expand(y: np.ndarray) -> np.ndarray:
    """Inverse companding F^-1 in float64 (the textbook formula)."""
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(MU)) / MU


def test_class_edges_follow_torchaudio_convention():
    codes = mulaw_encode(np.array([-1.0, 0.0, 1.0], dtype=np.float32))
    assert codes.tolist() == [0, 128, 255]
    assert codes.dtype == np.int64
    assert mulaw_decode(np.array([0, 255])).tolist() == [-1.0, 1.0]
    # beyond full scale clips to the outermost classes instead of overflowing
    assert mulaw_encode(np.array([-3.0, 2.5])).tolist() == [0, 255]


def test_every_class_is_a_fixed_point():
    codes = np.arange(256)
    assert np.array_equal(mulaw_encode(mulaw_decode(codes)), codes)


def test_round_trip_error_is_within_half_a_step():
    x = np.linspace(-1.0, 1.0, 400_001, dtype=np.float32)
    codes = mulaw_encode(x)
    assert np.all(np.diff(codes) >= 0)  # monotone
    assert set(np.unique(codes)) == set(range(256))  # every class is reachable
    err = np.abs(mulaw_decode(codes).astype(np.float64) - x)
    # Encoding rounds the companded value to the nearest of the classes,
    # spaced 2/μ apart, so it moves by at most 1/μ in the companded domain;
    # the linear error is at most the larger half step around the class (the
    # outward one, or the inward one for the outermost classes at ±1).
    centre = np.abs(codes * 2.0 / MU - 1.0)
    outward = _expand(np.minimum(centre + 1.0 / MU, 1.0)) - _expand(centre)
    inward = _expand(centre) - _expand(np.maximum(centre - 1.0 / MU, 0.0))
    half_step = np.maximum(outward, inward)
    assert np.all(err <= half_step + 1e-6)
    assert err.max() > 0.9 * half_step.max()  # the bound is tight, not vacuous
    # global: the widest step lies between the two loudest classes (4.3 % of
    # full scale); the error stays within its outer half in the companded
    # domain, which is a little more than half of it in amplitude (2.2 %).
    widest = 1.0 - _expand(1.0 - 2.0 / MU)
    assert 0.042 < widest < 0.043
    assert widest / 2 < err.max() <= 1.0 - _expand(1.0 - 1.0 / MU) + 1e-6 < 0.022
    # quiet samples get fine steps: below 1 % of full scale the error is over
    # 50 times smaller than at full scale (uniform 8-bit steps would not shrink)
    quiet = np.abs(x) < 0.01
    assert err[quiet].max() < err.max() / 50
