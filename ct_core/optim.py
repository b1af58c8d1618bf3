"""Optimizer and learning-rate schedule.

The paper trains with Adam, a linear warm-up to 3e-4 and a cosine decay to
1e-6, clipping the gradient norm at 0.1. Weight decay (AdamW) applies only to
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

from ct_core.run_config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear twice
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    # foreach=False keeps CPU updates bit-reproducible across resume.
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=False)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warm-up, then cosine to ``min_lr``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))
