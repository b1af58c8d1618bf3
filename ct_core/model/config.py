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

from dataclasses import dataclass
from typing import Callable

from ct_core.model.compression import COMPRESSIONS, PARAMETRIC_COMPRESSIONS
from ct_core.errors import ConfigError

COMPRESSION_LOSSES = ("attention", "autoencoding", "bptt", "none")
NORMS = ("pre", "post")
#: Recipe group of the options that do not live in ``model``.
MEMORY_KEYS = ("seq_len", "mem_len", "cmem_len", "compression_rate")
COMPRESSION_KEYS = ("compression", "compression_loss")


def recipe_key(name: str) -> str:
    """The recipe name of ModelConfig field ``name``: ``memory.seq_len``."""
    if name in MEMORY_KEYS:
        return f"memory.{name}"
    if name in COMPRESSION_KEYS:
        return f"compression.{name}"
    return f"model.{name}"


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
    # Adaptive input and adaptive softmax (see ct_core/model/adaptive.py):
    # word ids below the first cutoff form the head cluster, each further
    # range [cutoff_i, cutoff_i+1) a tail cluster of dimension
    # d_model // adaptive_div**i. Empty: one embedding and a plain softmax.
    # tie_embeddings then ties every cluster's word table and projection.
    adaptive_cutoffs: tuple[int, ...] = ()
    adaptive_div: int = 4

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def adaptive(self) -> bool:
        """Whether the vocabulary is split into clusters (adaptive input and softmax)."""
        return len(self.adaptive_cutoffs) > 0

    @property
    def compresses(self) -> bool:
        """Whether evicted memories are compressed at all."""
        return self.cmem_len > 0

    def validate(self, key: Callable[[str], str] = recipe_key) -> "ModelConfig":
        """Raise a one-line :class:`ConfigError` for the first invalid option,
        naming it with ``key`` (default: its recipe name, ``memory.seq_len``)."""

        def named(name: str) -> str:
            return f"{key(name)}={getattr(self, name)!r}"

        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "seq_len", "compression_rate"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{named(name)} must be a positive integer")
        for name in ("mem_len", "cmem_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{named(name)} must be an integer >= 0")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ConfigError(f"{named(name)} must lie in [0, 1)")
        self._validate_adaptive(named)
        if self.init_std <= 0:
            raise ConfigError(f"{named('init_std')} must be positive")
        if self.d_model % self.n_heads != 0:
            raise ConfigError(f"{named('d_model')} must be divisible by {named('n_heads')}")
        if self.norm not in NORMS:
            raise ConfigError(f"{named('norm')} is unknown; allowed: {', '.join(NORMS)}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"{named('compression')} is unknown; allowed: {', '.join(COMPRESSIONS)}")
        if self.compression_loss not in COMPRESSION_LOSSES:
            raise ConfigError(f"{named('compression_loss')} is unknown; allowed: {', '.join(COMPRESSION_LOSSES)}")
        if self.compresses and self.seq_len % self.compression_rate != 0:
            raise ConfigError(f"{named('seq_len')} must be a multiple of {named('compression_rate')}")
        if (
            self.compresses
            and self.compression_loss != "none"
            and self.compression not in PARAMETRIC_COMPRESSIONS
        ):
            raise ConfigError(
                f"{named('compression_loss')} trains the compressor, but {named('compression')} has no "
                f"parameters; use compression_loss=none or compression in ({', '.join(PARAMETRIC_COMPRESSIONS)})"
            )
        return self

    def _validate_adaptive(self, named: Callable[[str], str]) -> None:
        div = self.adaptive_div
        if not isinstance(div, int) or isinstance(div, bool) or div < 1:
            raise ConfigError(f"{named('adaptive_div')} must be an integer >= 1")
        cutoffs = list(self.adaptive_cutoffs)
        if any(not isinstance(c, int) or isinstance(c, bool) for c in cutoffs):
            raise ConfigError(f"{named('adaptive_cutoffs')} must be a list of integers")
        if any(c <= 0 or c >= self.vocab_size for c in cutoffs):
            raise ConfigError(f"{named('adaptive_cutoffs')} must lie strictly between 0 and "
                              f"model.vocab_size={self.vocab_size} (the vocabulary's size, set by the data)")
        if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
            raise ConfigError(f"{named('adaptive_cutoffs')} must be strictly increasing")
        if cutoffs and self.d_model // div ** len(cutoffs) < 1:
            raise ConfigError(f"{named('adaptive_div')} leaves the last of {len(cutoffs) + 1} clusters no dimension: "
                              f"{named('d_model')} // {div}**{len(cutoffs)} = 0; lower it")
