"""Optimizer and learning-rate schedule.

The paper trains with Adam, a linear warm-up from 1e-6 to 3e-4 and a cosine
decay back to 1e-6, clipping the gradient norm at 0.1: 4,000 warm-up and
100,000 decay steps at character level (enwik8, speech), 16,000 and 500,000
at word level (PG-19). The warm-up starts at ``min_lr``, not at 0, and the
rate stays at ``min_lr`` once the decay is over. Weight decay (AdamW) applies only to
matrices, never to norms, biases, the u/v position biases or compressors'
biases.

Example::

    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.01))
    sched = build_scheduler(opt, OptimConfig(), total_steps=10_000)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ct_core.train.run_config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """Adam(W) over the trainable parameters. ``fused`` (for CUDA): one
    kernel for the whole update, which can also skip the update on the
    device (``optimizer.found_inf``); otherwise per-parameter updates
    (``foreach=False``), which keep CPU training bit-reproducible across resume."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear twice
            continue
        seen.add(id(p))
        # u and v are [H, d] but are biases of the attention scores.
        is_matrix = p.dim() >= 2 and name.rsplit(".", 1)[-1] not in ("u", "v")
        (decay if is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    if fused:
        return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=False)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): linear warm-up from
    ``min_lr`` to ``lr`` over ``warmup_steps``, then a cosine to ``min_lr``
    over ``decay_steps`` (``None``: the rest of ``total_steps``)."""
    floor = cfg.min_lr / cfg.lr
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return floor + (1.0 - floor) * step / cfg.warmup_steps
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else total_steps - cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(decay_steps, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))
