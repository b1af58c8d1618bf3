"""Complete evaluation passes: every target of a split exactly once.

Lanes walk whole documents (see :class:`~ct_core.data.stream_batcher.StreamBatcher`
in eval mode), memory is carried across a document's segments and reset
between documents, and the summed NLL and token count go to the front end's
:meth:`~ct_core.data.frontend.FrontEnd.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ct_core.train.distributed import DistContext, all_reduce_sum
from ct_core.train.runtime import autocast_context
from ct_core.model.lm import CompressiveTransformerLM
from ct_core.data.stream_batcher import StreamBatcher


@dataclass
class EvalResult:
    nll_sum: float  # nats, summed over predicted tokens
    n_tokens: int
    complete: bool  # False when cut short by max_batches

    @property
    def nll(self) -> float:
        return self.nll_sum / max(self.n_tokens, 1)


@torch.no_grad()
def evaluate(
    model: CompressiveTransformerLM,
    documents: Sequence[np.ndarray],
    batch_size: int,
    mem_len: int,
    cmem_len: int,
    device: torch.device,
    precision: str = "auto",
    max_batches: int | None = None,
    ctx: DistContext | None = None,
) -> EvalResult:
    """Summed NLL over a split; ``mem_len``/``cmem_len`` may differ from
    training. Any world size works with any ``batch_size``: lanes are padded
    to a multiple of it with idle ones, so the result equals one process's."""
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    batcher = StreamBatcher(documents, batch_size=batch_size, seq_len=model.cfg.seq_len, mode="eval",
                            seed=0, shuffle=False, rank=ctx.rank, world_size=ctx.world_size)
    memory = model.empty_memory(batcher.n_lanes // ctx.world_size, mem_len, cmem_len, device=device)
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: one sync at the end
    n_tokens, complete = 0, True
    try:
        for i, batch in enumerate(batcher):
            if max_batches is not None and i >= max_batches:
                complete = False
                break
            batch = batch.to(device)
            with autocast_context(device, precision):
                out = model(batch.x, memory, batch.reset, targets=batch.y)
            memory = out.memory
            nll_sum += out.nll.sum()
            n_tokens += batch.n_targets
    finally:
        model.train(was_training)
    nll_sum, n_tokens = all_reduce_sum(ctx, [nll_sum.item(), float(n_tokens)], device)
    return EvalResult(nll_sum=nll_sum, n_tokens=int(n_tokens), complete=complete)


@torch.no_grad()
def probe_correctness(
    model: CompressiveTransformerLM,
    documents: Sequence[np.ndarray],
    probes: Sequence[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    mem_len: int,
    cmem_len: int,
    device: torch.device,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy exact match at probe positions (see :meth:`FrontEnd.probes`).

    Each row reads one document from its start with memory carried segment
    by segment, ``batch_size`` documents at a time. Returns whether the
    argmax at each probe position equals the next token ``[R]`` and the
    probes' distances ``[R]``, over all documents in order.
    """
    was_training = model.training
    model.eval()
    seq_len = model.cfg.seq_len
    correct, distances = [], []
    try:
        for first in range(0, len(documents), batch_size):
            docs = [np.asarray(d, dtype=np.int64) for d in documents[first : first + batch_size]]
            longest = max(len(d) for d in docs)
            tokens = torch.zeros(len(docs), longest, dtype=torch.long)  # [b, L], right-padded
            for row, doc in enumerate(docs):
                tokens[row, : len(doc)] = torch.from_numpy(doc)
            tokens = tokens.to(device)
            memory = model.empty_memory(len(docs), mem_len, cmem_len, device=device)
            predicted = []
            for start in range(0, longest, seq_len):
                with autocast_context(device, precision):
                    out = model(tokens[:, start : start + seq_len], memory, return_logits=False)
                    predicted.append(model.greedy(out.hidden))  # [b, T]
                memory = out.memory
            predicted = torch.cat(predicted, dim=1).cpu().numpy()  # [b, L]
            for row, doc in enumerate(docs):
                positions, dist = probes[first + row]
                correct.append(predicted[row, positions] == doc[positions + 1])
                distances.append(dist)
    finally:
        model.train(was_training)
    if not correct:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    return np.concatenate(correct), np.concatenate(distances)
