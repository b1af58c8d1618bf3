"""Data parallelism through ``torchrun``: process group, ranks, reductions.

``torchrun --nproc_per_node N -m ct_core.cli.train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; without them everything runs in one
process and the helpers here are no-ops. NCCL on GPU, gloo on CPU. Lanes of
the stream batcher are split across ranks, metrics are all-reduced, and rank
0 alone logs and saves.

Data preparation (hours for LibriSpeech or PG-19) runs on local rank 0 of
each node while the node's other ranks wait, in a gloo group of its own
whose timeout is :data:`PREPARE_TIMEOUT`: a barrier of the NCCL group would
give up after NCCL's 10 minutes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ct_core.errors import UserError

#: How long ranks wait for their node's local rank 0 to prepare the data.
PREPARE_TIMEOUT = datetime.timedelta(hours=24)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistContext:
    """Join the process group when launched by torchrun, else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    if device_kind == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    return ctx


def all_reduce_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over ranks (float64, so token counts stay exact)."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks in place and return it; on NCCL the sum is
    queued on the GPU and nothing waits for it until it is read."""
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_to_main(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's picklable ``obj`` at rank 0 (in rank order); other ranks get []."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def run_on_local_leader(ctx: DistContext, fn: Callable[[], None],
                        timeout: datetime.timedelta = PREPARE_TIMEOUT) -> None:
    """Run ``fn`` on local rank 0 of every node while the other ranks wait
    (up to ``timeout``); never on two ranks of one node at once. If ``fn``
    fails on a node, that rank re-raises its error and every other rank
    stops with a one-line :class:`UserError` instead of waiting."""
    if not ctx.enabled:
        fn()
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    failed = torch.zeros(1)
    error: BaseException | None = None
    try:
        if ctx.local_rank == 0:
            try:
                fn()
            except BaseException as err:  # every rank must still reach the all-reduce below
                failed += 1
                error = err
        dist.all_reduce(failed, group=group)
    finally:
        dist.destroy_process_group(group)
    if error is not None:
        raise error
    if failed.item():
        raise UserError("data preparation failed on local rank 0 of a node; its log says why")


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
