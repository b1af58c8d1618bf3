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
from typing import Any, Callable, Mapping

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
    # In a process group even alone: DDP, its bucket all-reduce and every
    # collective run at world size 1 (bench.gpu_check checks them so on one GPU).
    forced: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.forced

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str, env: Mapping[str, str] = os.environ,
                     set_device: Callable[[int], None] = torch.cuda.set_device,
                     init_process_group: Callable[..., None] = dist.init_process_group) -> DistContext:
    """Join the process group when launched by torchrun, else a single process.

    On CUDA the rank takes its local GPU before joining, and names it
    (``device_id``), so that NCCL's communicator and every barrier use that
    GPU from the start rather than GPU 0 of the node. ``set_device`` and
    ``init_process_group`` are torch's own (parameters only so that a test
    can see the order of the calls)."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_kind == "cuda":
            set_device(ctx.local_rank)
            init_process_group(backend="nccl", device_id=torch.device("cuda", ctx.local_rank))
        else:
            init_process_group(backend="gloo")
    elif device_kind == "cuda":
        set_device(ctx.local_rank)
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


class AnyRankFlag:
    """Whether any rank has raised a flag, learnt one call late and without
    blocking the training: every call sends this rank's flag in an
    all-reduce that runs in the background on a gloo group of its own (CPU
    tensors, so no GPU sync and nothing queued on NCCL), and returns the
    sum sent at the previous call, which has long arrived. Every rank calls
    :meth:`exchange` once per step, so all of them get the same answer at the
    same step. Single process: the flag itself, at once.

    Example::

        stop = AnyRankFlag(ctx)
        while training:
            if stop.exchange(signalled): break    # every rank breaks at the same step
        stop.close()
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self._group = dist.new_group(backend="gloo") if ctx.enabled else None
        self._sent: torch.Tensor | None = None
        self._work: Any = None

    def exchange(self, raised: bool) -> bool:
        """Send ``raised``; whether any rank raised its flag at the previous call."""
        if self._group is None:
            return raised
        any_before = False
        if self._work is not None:
            self._work.wait()  # launched a step ago: the other ranks sent theirs as they began that step
            any_before = bool(self._sent.item())  # a CPU tensor: no device sync
        self._sent = torch.tensor([float(raised)])
        self._work = dist.all_reduce(self._sent, op=dist.ReduceOp.SUM, group=self._group, async_op=True)
        return any_before

    def close(self) -> None:
        """Wait for the exchange in flight and leave the group (every rank, together)."""
        if self._group is None:
            return
        if self._work is not None:
            self._work.wait()
            self._work = None
        dist.destroy_process_group(self._group)
        self._group = None


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
