"""Typed configuration of a whole run: what a recipe resolves to.

A recipe (Hydra YAML) has the sections ``model``, ``memory``,
``compression``, ``data``, ``optim``, ``trainer``, ``eval`` plus the
top-level ``experiment_name``, ``resume``. :meth:`RunConfig.from_dict` turns
the resolved mapping into dataclasses once, at the edge; every unknown key is
a one-line :class:`ConfigError` naming ``section.key``.

The model's own options are split over three sections so that experiments
can swap them independently: ``model`` (sizes), ``memory`` (``seq_len``,
``mem_len``, ``cmem_len``, ``compression_rate``) and ``compression``
(``compression``, ``compression_loss``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ct_core.model.config import ModelConfig
from ct_core.errors import ConfigError

MEMORY_KEYS = ("seq_len", "mem_len", "cmem_len", "compression_rate")
COMPRESSION_KEYS = ("compression", "compression_loss")
OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class OptimConfig:
    """Adam(W) with linear warm-up from ``min_lr`` then cosine decay back to
    it over ``decay_steps`` (null: the rest of the run). Paper: 1e-6 -> 3e-4
    -> 1e-6."""

    name: str = "adam"
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_steps: int = 1000
    decay_steps: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.1
    compression_loss_weight: float = 1.0

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name={self.name!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"optim.lr={self.lr} and optim.min_lr={self.min_lr} need 0 <= min_lr <= lr, lr > 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if self.decay_steps is not None and self.decay_steps <= 0:
            raise ConfigError(f"optim.decay_steps={self.decay_steps} must be > 0 (or null: the rest of the run)")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"optim.clip_norm={self.clip_norm} must be > 0 (or null to disable clipping)")


@dataclass
class TrainerConfig:
    """Loop, batching, precision and bookkeeping."""

    steps: int = 1000
    batch_size: int = 8  # global lanes (streams) per optimizer step
    grad_accum: int = 1  # micro-batches per step; lanes are split among them
    # The paper's "reduce the frequency of optimisation updates (every 4
    # steps) after 60,000 iterations": from step update_every_after on, one
    # update accumulates update_every consecutive segments of the same lanes.
    update_every: int = 1
    update_every_after: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    shuffle: bool = True
    log_every: int = 10
    eval_every: int = 500
    eval_max_batches: int | None = None  # periodic evals only; the final one is complete
    save_every: int = 500
    keep_last: int = 3
    max_nonfinite: int = 5
    final_eval: bool = True
    sample_tokens: int = 0  # tokens sampled into <run>/samples/ at the end; 0 = none
    eval_sample_tokens: int = 0  # tokens sampled for TensorBoard at each evaluation; 0 = none
    sample_batch: int = 2
    threads: int | None = None  # CPU threads for torch; None = torch's default

    def validate(self) -> None:
        if not isinstance(self.update_every_after, int) or self.update_every_after < 0:
            raise ConfigError(f"trainer.update_every_after={self.update_every_after!r} must be an integer >= 0")
        for name in ("steps", "batch_size", "grad_accum", "update_every", "log_every", "eval_every", "save_every", "keep_last",
                     "max_nonfinite"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"trainer.{name}={value!r} must be a positive integer")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"trainer.batch_size={self.batch_size} must be divisible by trainer.grad_accum={self.grad_accum}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision={self.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")


@dataclass
class EvalConfig:
    """Evaluation: memory lengths may differ from training (paper: longer)."""

    batch_size: int = 8
    mem_len: int | None = None  # None = the training value
    cmem_len: int | None = None

    def validate(self, model: ModelConfig) -> None:
        """One-line errors naming the eval option; ``model`` is what is evaluated."""
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size <= 0:
            raise ConfigError(f"eval.batch_size={self.batch_size!r} must be a positive integer")
        for name in ("mem_len", "cmem_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"eval.{name}={value!r} must be an integer >= 0 (or null: as in training)")
        if self.cmem_len and not model.compresses:
            raise ConfigError(
                f"eval.cmem_len={self.cmem_len} needs a model trained with compressed memory, but this one has "
                "memory.cmem_len=0 (Transformer-XL); use eval.cmem_len=0 or leave it null"
            )


@dataclass
class RunConfig:
    model: ModelConfig
    data: dict[str, Any]
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    experiment_name: str = "run"
    resume: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the resolved recipe, for checkpoints

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], vocab_size: int | None = None) -> "RunConfig":
        """Build from a resolved recipe. ``vocab_size`` comes from the front end."""
        allowed = {"model", "memory", "compression", "data", "optim", "trainer", "eval", "experiment_name", "resume"}
        unknown = sorted(set(cfg) - allowed - {"hydra"})
        if unknown:
            raise ConfigError(f"{unknown[0]} is not a recipe section; allowed: {', '.join(sorted(allowed))}")
        model_values = dict(cfg.get("model") or {})
        for section, keys in (("memory", MEMORY_KEYS), ("compression", COMPRESSION_KEYS)):
            values = dict(cfg.get(section) or {})
            extra = sorted(set(values) - set(keys))
            if extra:
                raise ConfigError(f"{section}.{extra[0]} is not an option of {section}; allowed: {', '.join(keys)}")
            model_values.update({k: v for k, v in values.items() if k in keys})
        if "vocab_size" in model_values:
            raise ConfigError("model.vocab_size is set by the data front end; remove it from the recipe")
        model_values["vocab_size"] = vocab_size if vocab_size is not None else 1
        model = _build(ModelConfig, model_values, "model").validate()
        optim = _build(OptimConfig, cfg.get("optim") or {}, "optim")
        if isinstance(optim.betas, list):
            optim.betas = tuple(optim.betas)
        optim.validate()
        trainer = _build(TrainerConfig, cfg.get("trainer") or {}, "trainer")
        trainer.validate()
        evaluation = _build(EvalConfig, cfg.get("eval") or {}, "eval")
        evaluation.validate(model)
        data = dict(cfg.get("data") or {})
        if "frontend" not in data:
            raise ConfigError("data.frontend is missing: pick a data recipe, e.g. data=audio_demo")
        return cls(
            model=model,
            data=data,
            optim=optim,
            trainer=trainer,
            eval=evaluation,
            experiment_name=str(cfg.get("experiment_name", "run")),
            resume=cfg.get("resume"),
            raw={k: v for k, v in cfg.items() if k != "hydra"},
        )

    @property
    def eval_mem_len(self) -> int:
        return self.model.mem_len if self.eval.mem_len is None else self.eval.mem_len

    @property
    def eval_cmem_len(self) -> int:
        return self.model.cmem_len if self.eval.cmem_len is None else self.eval.cmem_len


def _build(cls: type, values: Mapping[str, Any], section: str) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]} is not an option of {section}; allowed: {', '.join(sorted(fields))}")
    return cls(**dict(values))
