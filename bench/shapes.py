"""Benchmark shapes: the fixed shapes S and M, the shapes of the training
recipes (composed with Hydra as ``ct-train`` composes them), and the model
FLOPs per trained token that MFU divides by.

Example::

    shape = get_shape("M")                      # or a recipe: get_shape("speech_ct")
    model_flops_per_token(shape)                # 6·N + 12·L·D·K
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A model shape plus the batch it is benchmarked at (paper names:
    ``seq_len`` n_s, ``mem_len`` n_m, ``cmem_len`` n_cm, ``compression_rate`` c)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    seq_len: int
    mem_len: int
    cmem_len: int
    compression_rate: int
    batch_size: int
    vocab_size: int = 256
    compression: str = "conv"
    compression_loss: str = "attention"
    sample_rate: int | None = None  # audio recipes: samples per second of the waveform
    dropout: float = 0.0
    tie_embeddings: bool = False
    adaptive_cutoffs: tuple[int, ...] = ()  # adaptive input and softmax (word-level recipes)
    adaptive_div: int = 4

    @property
    def n_keys(self) -> int:
        """K = n_cm + n_m + n_s: the keys every query of a full segment sees."""
        return self.cmem_len + self.mem_len + self.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def model_config(self):
        from ct_core.model.config import ModelConfig

        return ModelConfig(
            vocab_size=self.vocab_size, n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
            d_ff=self.d_ff, seq_len=self.seq_len, mem_len=self.mem_len, cmem_len=self.cmem_len,
            compression_rate=self.compression_rate, compression=self.compression,
            compression_loss=self.compression_loss, dropout=self.dropout, tie_embeddings=self.tie_embeddings,
            adaptive_cutoffs=self.adaptive_cutoffs, adaptive_div=self.adaptive_div,
        )

    def replace(self, **changes) -> "Shape":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        return (f"{self.name}: {self.n_layers} layers, d_model {self.d_model}, {self.n_heads} heads, d_ff {self.d_ff}, "
                f"seq/mem/cmem {self.seq_len}/{self.mem_len}/{self.cmem_len}, c = {self.compression_rate}, "
                f"batch {self.batch_size}, vocab {self.vocab_size}")


def matmul_parameters(shape: Shape) -> int:
    """N: weights every token multiplies by (q, k, v, o, the two FF matrices,
    the output head); embeddings are look-ups and not counted. With the
    adaptive softmax the head is the first cluster's words plus one logit per
    tail cluster (the tail clusters, which only their own tokens compute,
    are left out)."""
    d, f = shape.d_model, shape.d_ff
    head = shape.adaptive_cutoffs[0] + len(shape.adaptive_cutoffs) if shape.adaptive_cutoffs else shape.vocab_size
    return shape.n_layers * (4 * d * d + 2 * d * f) + d * head


def model_flops_per_token(shape: Shape) -> float:
    """Training FLOPs per token: ``6·N + 12·L·D·K`` (the PaLM MFU formula with
    the attended span K = n_cm + n_m + n_s instead of the sequence length).

    6·N: forward (2·N) plus backward (4·N) of every weight matrix. 12·L·D·K:
    QKᵀ and A·V cost 2·K·D each per token and layer in the forward pass, times
    three for forward + backward; the dense K (no causal discount) is what all
    implementations here compute. Not counted: relative-position scores,
    re-projecting the memories' keys/values every segment, the compression
    loss, norms, softmax and the optimizer (see the executed FLOPs column).
    """
    return 6.0 * matmul_parameters(shape) + 12.0 * shape.n_layers * shape.d_model * shape.n_keys


SHAPES: dict[str, Shape] = {
    "S": Shape("S", n_layers=4, d_model=256, n_heads=4, d_ff=1024, seq_len=128, mem_len=128, cmem_len=128,
               compression_rate=4, batch_size=8),
    "M": Shape("M", n_layers=8, d_model=512, n_heads=8, d_ff=2048, seq_len=256, mem_len=256, cmem_len=256,
               compression_rate=4, batch_size=4),
}

#: Word types of WikiText-103's training split (Transformer-XL's vocabulary):
#: the vocabulary of a word-level recipe whose data section does not state one.
WIKITEXT103_WORDS = 267_735

#: Recipe shapes by short name -> the experiment that defines them.
RECIPES = {"demo": "audio/demo", "speech_ct": "audio/speech_ct", "speech_txl": "audio/speech_txl",
           "enwik8_ct": "text/enwik8_ct", "enwik8_txl": "text/enwik8_txl", "pg19_ct": "text/pg19_ct",
           "pg19_txl": "text/pg19_txl", "wt103_ct": "text/wt103_ct", "wt103_txl": "text/wt103_txl",
           "shakespeare": "text/shakespeare_cpu"}


def recipe_shape(name: str) -> Shape:
    """The shape, training batch and vocabulary of a recipe (``--shape speech_ct``)."""
    from ct_core.cli.common import compose_recipe
    from ct_core.errors import ConfigError

    overrides = [f"experiment={RECIPES[name]}"]
    try:
        raw = compose_recipe(overrides, "bench")
    except ConfigError as err:
        # Paper recipes require a data path; it is never read here.
        key = "root" if "data.root" in str(err) else "path"
        raw = compose_recipe([*overrides, f"data.{key}=/unused"], "bench")
    data, values = raw["data"], {**raw["model"], **raw["memory"], **raw["compression"]}
    cutoffs = tuple(values.get("adaptive_cutoffs") or ())
    if data["frontend"] == "audio":
        vocab = 256  # 8-bit μ-law
    elif data.get("tokenizer") == "sentencepiece":
        vocab = int(data["vocab_size"])
    elif cutoffs:
        # Word-level recipes learn the vocabulary from the corpus.
        vocab = int(data.get("vocab_size") or WIKITEXT103_WORDS)
    else:
        vocab = 256
    return Shape(name, n_layers=values["n_layers"], d_model=values["d_model"], n_heads=values["n_heads"],
                 d_ff=values["d_ff"], seq_len=values["seq_len"], mem_len=values["mem_len"],
                 cmem_len=values["cmem_len"], compression_rate=values["compression_rate"],
                 batch_size=int(raw["trainer"]["batch_size"]), vocab_size=vocab,
                 compression=values["compression"], compression_loss=values["compression_loss"],
                 sample_rate=data.get("sample_rate"), dropout=values["dropout"],
                 tie_embeddings=values["tie_embeddings"], adaptive_cutoffs=cutoffs,
                 adaptive_div=values.get("adaptive_div", 4))


def get_shape(name: str) -> Shape:
    if name in SHAPES:
        return SHAPES[name]
    if name in RECIPES:
        return recipe_shape(name)
    raise SystemExit(f"unknown shape {name!r}; choose from {', '.join([*SHAPES, *RECIPES])}")
