"""The learning-rate schedule: linear warm-up from min_lr, cosine decay over
decay_steps, then min_lr; weight decay only on weight matrices (not on u, v)."""

import math

import pytest
import torch

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.train.optim import build_optimizer, build_scheduler, lr_factor
from ct_core.train.run_config import OptimConfig


def test_warmup_starts_at_min_lr_and_reaches_lr_linearly():
    cfg = OptimConfig(lr=3e-4, min_lr=1e-6, warmup_steps=4000, decay_steps=100_000)
    lr = [cfg.lr * lr_factor(step, cfg, total_steps=200_000) for step in (0, 1000, 2000, 4000)]
    assert lr[0] == pytest.approx(1e-6)
    assert lr[1] == pytest.approx(1e-6 + (3e-4 - 1e-6) / 4)
    assert lr[2] == pytest.approx(1e-6 + (3e-4 - 1e-6) / 2)
    assert lr[3] == pytest.approx(3e-4)


def test_cosine_decay_over_decay_steps_then_min_lr():
    cfg = OptimConfig(lr=3e-4, min_lr=1e-6, warmup_steps=4000, decay_steps=100_000)
    at = lambda step: cfg.lr * lr_factor(step, cfg, total_steps=200_000)  # noqa: E731
    assert at(4000 + 50_000) == pytest.approx(1e-6 + (3e-4 - 1e-6) * 0.5)
    quarter = 1e-6 + (3e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi / 4))
    assert at(4000 + 25_000) == pytest.approx(quarter)
    assert at(104_000) == pytest.approx(1e-6) and at(150_000) == pytest.approx(1e-6)


def test_without_decay_steps_the_cosine_spans_the_rest_of_the_run():
    cfg = OptimConfig(lr=1e-3, min_lr=0.0, warmup_steps=10)
    assert lr_factor(10, cfg, total_steps=110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, total_steps=110) == pytest.approx(0.5)
    assert lr_factor(110, cfg, total_steps=110) == pytest.approx(0.0)


def test_scheduler_follows_lr_factor():
    model = CompressiveTransformerLM(ModelConfig(vocab_size=8, n_layers=1, d_model=8, n_heads=2, d_ff=8))
    cfg = OptimConfig(lr=1e-2, min_lr=1e-4, warmup_steps=3, decay_steps=5)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=20)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([cfg.lr * lr_factor(s, cfg, 20) for s in range(10)])


def test_weight_decay_only_on_matrices():
    model = CompressiveTransformerLM(ModelConfig(vocab_size=8, n_layers=1, d_model=8, n_heads=2, d_ff=8))
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    attn = model.blocks[0].attn
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 or p is attn.u or p is attn.v for p in no_decay["params"])
    assert any(p is attn.u for p in no_decay["params"]) and any(p is attn.v for p in no_decay["params"])
    assert isinstance(opt, torch.optim.AdamW)
