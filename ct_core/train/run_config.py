"""Typed configuration of a whole run: what a recipe resolves to.

A recipe (Hydra YAML) has the sections ``model``, ``memory``,
``compression``, ``data``, ``optim``, ``trainer``, ``eval`` plus the
top-level ``experiment_name``, ``resume``. :meth:`RunConfig.from_dict` turns
the resolved mapping into dataclasses once, at the edge, through
:func:`ct_core.options.build_options`: every unknown key, wrongly typed or
out-of-range value is a one-line :class:`ConfigError` naming the option as
the user wrote it (``memory.seq_len``, ``trainer.steps``).

``model``, ``memory`` and ``compression`` together make the
:class:`~ct_core.model.config.ModelConfig` (see there); its ``vocab_size``
comes from the data front end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ct_core.errors import ConfigError
from ct_core.model.config import COMPRESSION_KEYS, MEMORY_KEYS, ModelConfig, recipe_key
from ct_core.options import build_options, section_key

OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")
ATTENTION_BACKENDS = ("auto", "sdpa", "flex")
#: torch.compile backends a run may name (aot_eager and eager compile fast, for tests and debugging).
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")
#: What trainer.device may say (whether the machine has it is checked when the run starts).
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
SECTIONS = ("model", "memory", "compression", "data", "optim", "trainer", "eval", "experiment_name", "resume")


def _positive(value: Any) -> bool:
    return value > 0


def _check(obj: Any, key: Callable[[str], str], names: tuple[str, ...], ok: Callable[[Any], bool], what: str,
           optional: bool = False) -> None:
    """One-line error for the first of ``names`` whose value fails ``ok``."""
    for name in names:
        value = getattr(obj, name)
        if optional and value is None:
            continue
        if not ok(value):
            raise ConfigError(f"{key(name)}={value!r} must be {what}" + (" (or null)" if optional else ""))


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
    clip_norm: float | None = 0.1
    compression_loss_weight: float = 1.0

    def validate(self, key: Callable[[str], str] = section_key("optim")) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"{key('name')}={self.name!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
        _check(self, key, ("lr", "eps"), _positive, "> 0")
        _check(self, key, ("min_lr", "weight_decay", "compression_loss_weight", "warmup_steps"),
               lambda v: v >= 0, ">= 0")
        if self.min_lr > self.lr:
            raise ConfigError(f"{key('min_lr')}={self.min_lr} must not exceed {key('lr')}={self.lr}")
        _check(self, key, ("decay_steps",), _positive, "> 0 (null: the rest of the run)", optional=True)
        _check(self, key, ("clip_norm",), _positive, "> 0 (null disables clipping)", optional=True)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{key('betas')}={list(self.betas)} must lie in [0, 1)")


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
    compile: bool = False  # torch.compile every block (the memory update stays eager)
    compile_backend: str = "inductor"  # torch.compile backend; aot_eager compiles fast (tests)
    attention_backend: str = "auto"  # auto: flex on CUDA, sdpa on CPU
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
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
    # Train in a run directory that holds an earlier run (deleting its
    # checkpoints, metrics and events) instead of refusing to.
    overwrite: bool = False

    def validate(self, key: Callable[[str], str] = section_key("trainer")) -> None:
        _check(self, key, ("steps", "batch_size", "grad_accum", "update_every", "log_every", "eval_every",
                           "save_every", "max_nonfinite", "sample_batch"), _positive, "a positive integer")
        _check(self, key, ("update_every_after", "keep_last", "sample_tokens", "eval_sample_tokens"),
               lambda v: v >= 0, "an integer >= 0")
        _check(self, key, ("eval_max_batches", "threads"), _positive, "a positive integer", optional=True)
        # numpy's global generator takes seeds in [0, 2^32).
        _check(self, key, ("seed",), lambda v: 0 <= v < 2**32, "an integer in [0, 2^32)")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"{key('batch_size')}={self.batch_size} must be divisible by {key('grad_accum')}={self.grad_accum}"
            )
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"{key('device')}={self.device!r} is not a device; use auto, cpu, cuda or cuda:N")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{key('precision')}={self.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"{key('attention_backend')}={self.attention_backend!r} is unknown; allowed: "
                              f"{', '.join(ATTENTION_BACKENDS)}")
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ConfigError(f"{key('compile_backend')}={self.compile_backend!r} is unknown; allowed: "
                              f"{', '.join(COMPILE_BACKENDS)}")


@dataclass
class EvalConfig:
    """Evaluation: memory lengths may differ from training (paper: longer)."""

    batch_size: int = 8
    mem_len: int | None = None  # None = the training value
    cmem_len: int | None = None
    attention_report: bool = False  # ct-eval: also write attention mass by distance (PNG + JSON)

    def validate(self, key: Callable[[str], str] = section_key("eval")) -> None:
        _check(self, key, ("batch_size",), _positive, "a positive integer")
        _check(self, key, ("mem_len", "cmem_len"), lambda v: v >= 0, "an integer >= 0", optional=True)


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
    def from_dict(cls, cfg: Mapping[str, Any], vocab_size: int) -> "RunConfig":
        """Build from a resolved recipe; ``vocab_size`` comes from the front end."""
        unknown = sorted(set(cfg) - set(SECTIONS) - {"hydra"})
        if unknown:
            raise ConfigError(f"{unknown[0]} is not a recipe section; allowed: {', '.join(SECTIONS)}")
        model = build_options(ModelConfig, {**model_options(cfg), "vocab_size": vocab_size}, recipe_key)
        optim = build_options(OptimConfig, _section(cfg, "optim"), "optim")
        trainer = build_options(TrainerConfig, _section(cfg, "trainer"), "trainer")
        evaluation = build_options(EvalConfig, _section(cfg, "eval"), "eval")
        if evaluation.cmem_len and not model.compresses:
            raise ConfigError(
                f"eval.cmem_len={evaluation.cmem_len} needs a model trained with compressed memory, but this "
                "one has memory.cmem_len=0 (Transformer-XL); use eval.cmem_len=0 or leave it null"
            )
        data = _section(cfg, "data")
        if "frontend" not in data:
            raise ConfigError("data.frontend is missing: pick a data recipe, e.g. data=audio_demo")
        resume = cfg.get("resume")
        if resume is not None and not isinstance(resume, str):
            raise ConfigError(f"resume={resume!r} must be auto or a checkpoint path")
        return cls(
            model=model,
            data=data,
            optim=optim,
            trainer=trainer,
            eval=evaluation,
            experiment_name=str(cfg.get("experiment_name", "run")),
            resume=resume,
            raw={k: v for k, v in cfg.items() if k != "hydra"},
        )

    @property
    def eval_mem_len(self) -> int:
        return self.model.mem_len if self.eval.mem_len is None else self.eval.mem_len

    @property
    def eval_cmem_len(self) -> int:
        return self.model.cmem_len if self.eval.cmem_len is None else self.eval.cmem_len


def _section(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = cfg.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}={value!r} must be a section of options, e.g. {name}.KEY=VALUE")
    return dict(value)


def model_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields of a recipe's ``model``, ``memory`` and
    ``compression`` sections, each key checked against its own section."""
    own = {"memory": MEMORY_KEYS, "compression": COMPRESSION_KEYS}
    model_keys = sorted(set(ModelConfig.__dataclass_fields__) - set(MEMORY_KEYS) - set(COMPRESSION_KEYS)
                        - {"vocab_size"})
    values: dict[str, Any] = {}
    for section, keys in (("model", tuple(model_keys)), *own.items()):
        part = _section(cfg, section)
        if section == "model" and "vocab_size" in part:
            raise ConfigError("model.vocab_size is set by the data front end; remove it from the recipe")
        extra = sorted(set(part) - set(keys))
        if extra:
            raise ConfigError(f"{section}.{extra[0]} is not an option of {section}; allowed: {', '.join(keys)}")
        values.update(part)
    return values
