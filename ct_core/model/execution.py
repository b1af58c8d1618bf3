"""How the layers run: eager or compiled, with or without activation
checkpointing, through SDPA or FlexAttention.

These are runtime choices, not architecture: they change neither the
parameters nor what a checkpoint holds, and the model computes the same
function under each of them (up to kernel rounding). The trainer picks
them from its options (``trainer.compile``, ``trainer.compile_backend``,
``trainer.activation_checkpointing``, ``trainer.attention_backend``) and
hands them to :meth:`CompressiveTransformerLM.set_execution`.

Compiling per block rather than the whole model keeps the memory update
(Algorithm 1, the compressor and its loss) in eager mode, outside any
compiled graph: a compiled region then never spans the ``pending`` block
that BPTT carries from one step to the next, DDP sees ordinary parameters
(no whole-model graph split at bucket boundaries), and every layer reuses
one graph (the blocks share their code; their weights are graph inputs).
Graphs are static (``dynamic=False``): training segments always have the
same shape, and an evaluation with other memory lengths compiles a graph of
its own instead of turning the training graph into a slower dynamic one.

Example::

    model.set_execution(Execution(attention="flex", activation_checkpointing=True,
                                  compile_backend="inductor"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

ATTENTION_BACKENDS = ("sdpa", "flex")


@dataclass(frozen=True)
class Execution:
    """``attention``: ``sdpa`` (additive bias through
    ``scaled_dot_product_attention``) or ``flex`` (FlexAttention with a
    position ``score_mod`` and a block mask); ``compile_backend``: None runs
    the blocks eagerly, else a ``torch.compile`` backend (``inductor``,
    ``aot_eager``); ``compile_mode``: ``torch.compile``'s ``mode``."""

    attention: str = "sdpa"
    activation_checkpointing: bool = False
    compile_backend: str | None = None
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={self.attention!r} is unknown; allowed: {', '.join(ATTENTION_BACKENDS)}")


class CheckpointedBlock(nn.Module):
    """A block whose activations are recomputed in the backward pass instead
    of being kept (``torch.utils.checkpoint``, non-reentrant): only the
    block's inputs stay in memory between forward and backward. Dropout
    draws the same masks again (the RNG state is restored for the recompute).
    Without gradients (evaluation) it is the plain block."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.block(*args)
        return checkpoint(self.block, *args, use_reentrant=False)


def block_callables(blocks: nn.ModuleList, execution: Execution) -> list[Callable[..., Any]]:
    """What runs each block under ``execution``: the block itself, wrapped
    for checkpointing and/or compiled. The wrappers are not registered as
    submodules, so ``state_dict`` and ``parameters()`` stay those of the model."""
    fns: list[Callable[..., Any]] = []
    for block in blocks:
        fn: nn.Module = CheckpointedBlock(block) if execution.activation_checkpointing else block
        if execution.compile_backend is not None:
            # Checkpointing inside the compiled region: the compiler sees the
            # checkpoint and recomputes in the backward graph itself.
            fn = torch.compile(fn, backend=execution.compile_backend, mode=execution.compile_mode, dynamic=False)
        fns.append(fn)
    return fns
