"""Contenders: our model and the peer implementations behind one interface,
built at a benchmark :class:`~bench.shapes.Shape`.

- ``ours``: :class:`ct_core.model.lm.CompressiveTransformerLM`, conv compression
  trained by the attention-reconstruction loss (Algorithm 2).
- ``ctp``: ``compressive-transformer-pytorch`` 0.4.0 as shipped. Its
  attention calls ``self.to_kv.weight.detach_()`` in every training forward
  that compresses, which flips ``requires_grad`` off for good: from the
  second step on, its key/value projections are frozen and skip their
  weight gradients.
- ``ctp-trainable``: the same model with every weight trainable: after each
  forward the key/value weights get ``requires_grad`` back, so the backward
  pass accumulates their gradients again (the compression loss itself still
  sees them detached, as the paper wants).
- ``xtransformers``: ``x_transformers.TransformerWrapper`` with a
  Transformer-XL memory of ``mem_len + cmem_len`` slots (the same attended
  span), no compression, T5 relative position bias (its Transformer-XL
  example).

Peers are used as installed (``pip install -e ".[bench]"``), never copied.
Their residual paths are configured to match our pre-LN blocks (for ``ctp``
that means ``gru_gated_residual=False``); the feed-forward width is 4·D in
both, which every benchmark shape uses. A peer that is not installed raises
:class:`PeerUnavailable` with the install command.

Example::

    c = build_contender("ours", get_shape("S"), torch.device("cpu"))
    loss = c.loss(x, y)          # memory carried to the next call
    seq = c.generate(prompt, 64)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.shapes import Shape

NAMES = ("ours", "ctp", "ctp-trainable", "xtransformers")
INSTALL = 'pip install -e ".[bench]"'
TOP_K = 25  # the peers' generate keeps the top 10% of logits by default: 25 of 256


class PeerUnavailable(RuntimeError):
    """A peer package is missing; the message says what to install."""


class Contender:
    """One implementation: a model, its carried memory, a loss and a sampler."""

    name: str = ""
    note: str = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward: Callable = model  # replaced by the compiled module under --compile

    def reset(self) -> None:
        """Forget the carried memory (a new stream)."""
        raise NotImplementedError

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Forward ``x`` ``[B, T]`` with the carried memory: mean cross entropy
        against ``y`` plus the compression loss; the new memory is kept."""
        raise NotImplementedError

    def generate(self, prompt: Tensor, n_new: int) -> Tensor:
        """Sample ``n_new`` tokens after ``prompt`` ``[B, P]`` with the
        implementation's own decoding loop."""
        raise NotImplementedError

    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW over every trainable weight (ours: its own builder, same algorithm)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=False)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())


class Ours(Contender):
    name = "ours"
    note = "ct_core CompressiveTransformerLM, conv f_c + attention-reconstruction loss"

    def __init__(self, shape: Shape, device: torch.device) -> None:
        from ct_core.model.lm import CompressiveTransformerLM

        super().__init__(CompressiveTransformerLM(shape.model_config()).to(device))
        self.memory = None
        # generate's decoding options (compile, kv_dtype); bench.sampling_speed sets them.
        self.decoding: dict = {}

    def reset(self) -> None:
        self.memory = None

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        out = self.forward(x, self.memory)
        self.memory = out.memory
        return F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten()) + out.aux_loss

    def generate(self, prompt: Tensor, n_new: int) -> Tensor:
        from ct_core.model.sampling import generate

        return generate(self.model, prompt, n_new, top_k=TOP_K, **self.decoding)

    def optimizer(self) -> torch.optim.Optimizer:
        from ct_core.train.optim import build_optimizer
        from ct_core.train.run_config import OptimConfig

        # The trainer's own optimizer (AdamW, decay on matrices only, foreach=False).
        return build_optimizer(self.model, OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01))


class CompressiveTransformerPytorch(Contender):
    name = "ctp"
    note = "compressive-transformer-pytorch 0.4.0 as shipped (k/v projections freeze after step 1)"

    def __init__(self, shape: Shape, device: torch.device, all_trainable: bool) -> None:
        try:
            from compressive_transformer_pytorch import CompressiveTransformer
        except ImportError:
            raise PeerUnavailable(f"compressive-transformer-pytorch is not installed: {INSTALL}") from None
        if shape.d_ff != 4 * shape.d_model:
            raise PeerUnavailable(f"compressive-transformer-pytorch fixes d_ff = 4·d_model; shape has {shape.d_ff}")
        model = CompressiveTransformer(
            num_tokens=shape.vocab_size, dim=shape.d_model, seq_len=shape.seq_len, depth=shape.n_layers,
            mem_len=shape.mem_len, cmem_len=shape.cmem_len, cmem_ratio=shape.compression_rate,
            heads=shape.n_heads, gru_gated_residual=False,
        )
        super().__init__(model.to(device))
        self.all_trainable = all_trainable
        if all_trainable:
            self.name = "ctp-trainable"
            self.note = "compressive-transformer-pytorch 0.4.0, k/v projections kept trainable"
        # The weights its attention detaches in place, found by walking the model.
        self.kv_weights = [m.to_kv.weight for m in model.modules() if hasattr(m, "to_kv")]
        self.memory = None

    def reset(self) -> None:
        self.memory = None

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        logits, self.memory, aux = self.forward(x, memories=self.memory)
        if self.all_trainable:
            # Undo `to_kv.weight.detach_()`: a leaf with requires_grad=False
            # would drop the gradient the forward pass already routed to it.
            for w in self.kv_weights:
                w.requires_grad_(True)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) + aux.sum()

    def generate(self, prompt: Tensor, n_new: int) -> Tensor:
        from compressive_transformer_pytorch import AutoregressiveWrapper

        return AutoregressiveWrapper(self.model).generate(prompt, n_new)


class XTransformersXL(Contender):
    name = "xtransformers"
    note = "x-transformers TransformerWrapper, XL memory of mem_len + cmem_len, rel_pos_bias"

    def __init__(self, shape: Shape, device: torch.device) -> None:
        try:
            from x_transformers import Decoder, TransformerWrapper
        except ImportError:
            raise PeerUnavailable(f"x-transformers is not installed: {INSTALL}") from None
        model = TransformerWrapper(
            num_tokens=shape.vocab_size, max_seq_len=shape.seq_len, max_mem_len=shape.mem_len + shape.cmem_len,
            attn_layers=Decoder(dim=shape.d_model, depth=shape.n_layers, heads=shape.n_heads,
                                ff_mult=shape.d_ff // shape.d_model, rel_pos_bias=True),
        )
        super().__init__(model.to(device))
        self.mems = None

    def reset(self) -> None:
        self.mems = None

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        logits, self.mems = self.forward(x, mems=self.mems, return_mems=True)  # mems come back detached
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def generate(self, prompt: Tensor, n_new: int) -> Tensor:
        from x_transformers.xl_autoregressive_wrapper import XLAutoregressiveWrapper

        return XLAutoregressiveWrapper(self.model).generate(prompt, n_new)


def build_contender(name: str, shape: Shape, device: torch.device) -> Contender:
    """Build ``name`` (one of :data:`NAMES`) at ``shape``, seeded for repeatability."""
    torch.manual_seed(0)
    if name == "ours":
        return Ours(shape, device)
    if name in ("ctp", "ctp-trainable"):
        return CompressiveTransformerPytorch(shape, device, all_trainable=name == "ctp-trainable")
    if name == "xtransformers":
        return XTransformersXL(shape, device)
    raise ValueError(f"unknown contender {name!r}; choose from {', '.join(NAMES)}")


def build_available(names: list[str], shape: Shape, device: torch.device) -> tuple[list[Contender], list[str]]:
    """The contenders that could be built, and a skip message for each other one."""
    built, skipped = [], []
    for name in names:
        try:
            built.append(build_contender(name, shape, device))
        except PeerUnavailable as err:
            skipped.append(f"{name} skipped: {err}")
            print(f"[bench] {skipped[-1]}")
    return built, skipped
