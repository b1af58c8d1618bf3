"""Compression functions: shapes, values, determinism."""

import pytest
import torch

from ct_core.compression import COMPRESSORS, build_compressor


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_shape_and_determinism(name):
    torch.manual_seed(0)
    b, t, d, c = 3, 12, 8, 4
    comp = build_compressor(name, d, c)
    old = torch.randn(b, t, d)
    mask = torch.ones(b, t, dtype=torch.bool)
    usage = torch.rand(b, t)
    out1 = comp(old, mask, usage)
    out2 = comp(old.clone(), mask.clone(), usage.clone())
    assert out1.shape == (b, t // c, d)
    assert torch.equal(out1, out2)


def test_pooling_values_ignore_empty_slots():
    old = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, -5.0, 7.0]]).view(1, 8, 1)
    mask = torch.tensor([[True, True, True, True, False, False, True, True]])
    mean = build_compressor("mean_pool", 1, 4)(old, mask)
    mx = build_compressor("max_pool", 1, 4)(old, mask)
    assert mean.flatten().tolist() == [2.5, 1.0]
    assert mx.flatten().tolist() == [4.0, 7.0]
    empty = torch.zeros(1, 8, dtype=torch.bool)
    assert build_compressor("max_pool", 1, 4)(old * 0, empty).abs().sum() == 0


def test_conv_sees_only_its_group_and_dilated_sees_previous():
    d, c = 2, 2
    conv = build_compressor("conv", d, c)
    dil = build_compressor("dilated_conv", d, c)
    old = torch.randn(1, 8, d)
    bumped = old.clone()
    bumped[0, 3] += 1.0  # slot 3 belongs to group 1
    dc = (conv(bumped, None) - conv(old, None)).abs().sum(-1)[0]
    assert dc[1] > 0 and dc[0] == 0 and dc[2] == 0 and dc[3] == 0
    dd = (dil(bumped, None) - dil(old, None)).abs().sum(-1)[0]
    # kernel 2, dilation 2, left pad 1: group g reads slots 2g-1 and 2g+1.
    assert dd[1] > 0 and dd[2] > 0 and dd[0] == 0 and dd[3] == 0


def test_most_used_keeps_highest_usage_in_time_order():
    old = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    mask = torch.tensor([[False, True, True, True, True, True]])
    usage = torch.tensor([[9.0, 0.1, 0.7, 0.2, 0.9, 0.3]])  # slot 0 is empty
    out = build_compressor("most_used", 1, 2)(old, mask, usage)
    assert out.flatten().tolist() == [2.0, 4.0, 5.0]
