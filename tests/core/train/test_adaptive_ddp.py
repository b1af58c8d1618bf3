"""The adaptive softmax trains under DDP without find_unused_parameters:
every parameter gets a gradient in every step (clusters no target of a
rank's micro-batch hits run with zero rows), and two processes train the
weights one process trains on the same global batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.train.distributed import DistContext
from ct_core.train.trainer import Trainer

STEPS = 3
WORLD = 2
#: The last cluster is the single word 31, which many micro-batches lack.
ADAPTIVE = ["+model.adaptive_cutoffs=[8,16,31]", "+model.adaptive_div=2", "model.tie_embeddings=true"]


def make_trainer(run_dir, ctx=None):
    raw = compose_recipe(["experiment=smoke/synthetic", "compression=mean_pool", *ADAPTIVE, f"trainer.steps={STEPS}",
                          "trainer.batch_size=4", "trainer.grad_accum=2", "trainer.threads=1",
                          "trainer.eval_every=100", "trainer.save_every=100", "trainer.sample_tokens=0",
                          "trainer.eval_sample_tokens=0"], "test")
    cfg, frontend = build_run(raw)
    return Trainer(cfg, frontend, run_dir, ctx)


def worker(rank, store, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        trainer = make_trainer(out_dir / "run", DistContext(rank, WORLD, rank))
        for _ in range(STEPS):
            assert trainer.train_step() is not None
        torch.save(trainer.model.state_dict(), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_adaptive_softmax_trains_under_ddp_as_one_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "store"), tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = make_trainer(tmp_path / "single")
    for _ in range(STEPS):
        single.train_step()
    for name, want in single.model.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], want, atol=1e-5), name
