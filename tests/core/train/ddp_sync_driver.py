"""Trains a few steps under torchrun and writes, per training step and
rank, the collectives the step issued, for the test of what a step waits
for. Not a test itself.

    torchrun --nproc_per_node 2 tests/core/train/ddp_sync_driver.py OUT.json [overrides ...]

Each rank writes ``OUT.json.<rank>``: a list with one entry per loop
iteration of ``Trainer.fit`` (from one ``train_step`` to the next), each a
list of ``[group, blocking]`` for every ``all_reduce`` issued (``group`` is
``default`` or ``side``), plus the steps that logged.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch.distributed as dist

from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.train.distributed import init_distributed, shutdown
from ct_core.train.trainer import Trainer


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    ctx = init_distributed("cpu")
    raw = compose_recipe(["experiment=smoke/synthetic", "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0",
                          "trainer.threads=1", *overrides], "driver")
    cfg, frontend = build_run(raw)
    frontend.prepare(progress=False)
    iterations: list[list[list[object]]] = [[]]
    real_all_reduce = dist.all_reduce

    def counted(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        iterations[-1].append(["default" if group is None else "side", not async_op])
        return real_all_reduce(tensor, op=op, group=group, async_op=async_op)

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, frontend, Path(run_dir), ctx)
        real_step = trainer.train_step

        def step():
            iterations.append([])  # what follows belongs to this step, up to the next one
            return real_step()

        trainer.train_step = step
        dist.all_reduce = counted
        try:
            trainer.fit()
        finally:
            dist.all_reduce = real_all_reduce
    # iterations[0]: before the first step (start-up); [i]: step i and the checks after it.
    out.with_name(f"{out.name}.{ctx.rank}").write_text(json.dumps(iterations))
    shutdown(ctx)


if __name__ == "__main__":
    main()
