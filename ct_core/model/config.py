"""Typed configuration of the model.

Names follow the paper (Rae et al., 2019): ``seq_len`` (n_s), ``mem_len``
(n_m), ``cmem_len`` (n_cm), ``compression_rate`` (c). Recipes (Hydra YAML)
are turned into these dataclasses once, at the edge; modules never see a
``DictConfig``.

Example::

    cfg = ModelConfig(vocab_size=256, n_layers=2, d_model=64, n_heads=4, d_ff=256,
                      seq_len=16, mem_len=16, cmem_len=8, compression_rate=4)
    cfg.validate()
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ct_core.model.compression import COMPRESSIONS, PARAMETRIC_COMPRESSIONS
from ct_core.errors import ConfigError

COMPRESSION_LOSSES = ("attention", "autoencoding", "bptt", "none")
NORMS = ("pre", "post")


@dataclass
class ModelConfig:
    """Architecture of a :class:`~ct_core.model.lm.CompressiveTransformerLM`.

    ``cmem_len = 0`` is Transformer-XL; ``mem_len = cmem_len = 0`` is a
    vanilla segment-local transformer.
    """

    vocab_size: int
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    seq_len: int = 16
    mem_len: int = 0
    cmem_len: int = 0
    compression_rate: int = 4
    compression: str = "conv"
    compression_loss: str = "attention"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    norm: str = "pre"
    tie_embeddings: bool = False
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def compresses(self) -> bool:
        """Whether evicted memories are compressed at all."""
        return self.cmem_len > 0

    def validate(self) -> "ModelConfig":
        """Raise a one-line :class:`ConfigError` for the first invalid option."""
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "seq_len", "compression_rate"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name}={value!r} must be a positive integer")
        for name in ("mem_len", "cmem_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"model.{name}={value!r} must be an integer >= 0")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"model.{name}={value!r} must lie in [0, 1)")
        if self.d_model % self.n_heads != 0:
            raise ConfigError(
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}"
            )
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm={self.norm!r} is unknown; allowed: {', '.join(NORMS)}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"model.compression={self.compression!r} is unknown; allowed: {', '.join(COMPRESSIONS)}"
            )
        if self.compression_loss not in COMPRESSION_LOSSES:
            raise ConfigError(
                f"model.compression_loss={self.compression_loss!r} is unknown; "
                f"allowed: {', '.join(COMPRESSION_LOSSES)}"
            )
        if self.compresses and self.seq_len % self.compression_rate != 0:
            raise ConfigError(
                f"model.seq_len={self.seq_len} must be a multiple of "
                f"model.compression_rate={self.compression_rate}"
            )
        if (
            self.compresses
            and self.compression_loss != "none"
            and self.compression not in PARAMETRIC_COMPRESSIONS
        ):
            raise ConfigError(
                f"model.compression_loss={self.compression_loss!r} trains the compressor, but "
                f"model.compression={self.compression!r} has no parameters; use "
                f"compression_loss=none or compression in ({', '.join(PARAMETRIC_COMPRESSIONS)})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Build from a mapping; unknown keys are a one-line error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(
                f"model.{unknown[0]} is not a model option; allowed: {', '.join(sorted(fields))}"
            )
        if "vocab_size" not in values:
            raise ConfigError("model.vocab_size is missing")
        return cls(**dict(values))
