"""Compression functions: shapes, values, determinism."""

import pytest
import torch

from ct_core.model.compression import COMPRESSORS, build_compressor


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


def slot_influence(name: str, c: int, groups: int = 4, d: int = 64) -> torch.Tensor:
    """``[T', T'/c]``: whether output slot j depends on input slot i (a
    non-zero gradient), for a compressor with random weights."""
    torch.manual_seed(0)
    comp = build_compressor(name, d, c)
    for p in comp.parameters():
        torch.nn.init.normal_(p)
    t = groups * c
    old = torch.randn(1, t, d, requires_grad=True)
    mask = torch.ones(1, t, dtype=torch.bool)
    usage = torch.rand(1, t)
    out = comp(old, mask, usage)[0]  # [G, D]
    rows = []
    for j in range(out.shape[0]):
        (grad,) = torch.autograd.grad(out[j].sum(), old, retain_graph=True)
        rows.append(grad[0].abs().sum(-1) > 0)  # [T']
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("c", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(set(COMPRESSORS) - {"most_used"}))
def test_every_evicted_slot_reaches_a_compressed_slot(name, c):
    assert slot_influence(name, c).any(dim=1).all()


@pytest.mark.parametrize("c", [2, 3, 4])
def test_most_used_keeps_any_slot_that_is_attended_most(c):
    """most_used drops slots by design; each one is kept when it is among
    the most attended."""
    t, d = 4 * c, 3
    old = torch.randn(1, t, d)
    mask = torch.ones(1, t, dtype=torch.bool)
    comp = build_compressor("most_used", d, c)
    for slot in range(t):
        usage = torch.zeros(1, t)
        usage[0, slot] = 1.0
        kept = comp(old, mask, usage)[0]
        assert (kept == old[0, slot]).all(dim=-1).any()


@pytest.mark.parametrize("c", [2, 3, 4])
def test_conv_sees_its_group_and_dilated_conv_also_the_group_before(c):
    conv, dilated = slot_influence("conv", c), slot_influence("dilated_conv", c)
    group = torch.arange(4 * c) // c  # [T'] group of each input slot
    for j in range(4):
        assert conv[:, j].tolist() == (group == j).tolist()
        # Causal, at least the group and the one before, never a later group.
        assert dilated[group == j, j].all() and dilated[group == j - 1, j].all()
        assert not dilated[group > j, j].any()


def test_most_used_keeps_highest_usage_in_time_order():
    old = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    mask = torch.tensor([[False, True, True, True, True, True]])
    usage = torch.tensor([[9.0, 0.1, 0.7, 0.2, 0.9, 0.3]])  # slot 0 is empty
    out = build_compressor("most_used", 1, 2)(old, mask, usage)
    assert out.flatten().tolist() == [2.0, 4.0, 5.0]
