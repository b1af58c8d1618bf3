"""Data preparation under torchrun: local rank 0 prepares while the node's
other ranks wait longer than the process group's own timeout (NCCL's is 10
minutes; here the group's is 2 seconds and preparing takes 5), nobody else
prepares, and a failed preparation stops every rank at once."""

import datetime
import json
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from ct_core.errors import UserError
from ct_core.train.distributed import DistContext, run_on_local_leader

WORLD = 2
PREPARE_SECONDS = 5.0


def worker(rank, store, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=2))
    ctx = DistContext(rank, WORLD, local_rank=rank)  # one node with two ranks
    record = {"prepared": 0}

    def prepare():
        time.sleep(PREPARE_SECONDS)
        record["prepared"] += 1
        record["prepared_at"] = time.time()

    def broken():
        raise OSError("disk full")

    try:
        run_on_local_leader(ctx, prepare)
        record["released_at"] = time.time()
        dist.barrier()  # the default group still works afterwards
        started = time.time()
        try:
            run_on_local_leader(ctx, broken)
        except (OSError, UserError) as err:
            record["error"] = f"{type(err).__name__}: {err}"
            record["error_after"] = time.time() - started
    finally:
        dist.destroy_process_group()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))


def test_local_rank_zero_prepares_and_the_others_wait_past_the_group_timeout(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "store"), tmp_path), nprocs=WORLD, join=True)
    leader, follower = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert leader["prepared"] == 1 and follower["prepared"] == 0
    assert follower["released_at"] >= leader["prepared_at"]
    assert leader["error"] == "OSError: disk full"
    assert follower["error"] == "UserError: data preparation failed on local rank 0 of a node; its log says why"
    assert follower["error_after"] < 2.0
