"""Every compression choice, and the adaptive softmax, trains under DDP
(two gloo processes, without find_unused_parameters): each optimizer step
reduces every gradient, both ranks hold the same weights, the weights a loss
trains move and frozen compressors do not, and choices without an auxiliary
loss train the weights one process trains on the same global batch. The
adaptive model's last cluster is one word that many micro-batches lack:
clusters no target of a rank hits still run, with zero rows."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ct_core.cli.common import compose_recipe, recipes_dir
from ct_core.cli.run_setup import build_run
from ct_core.train.distributed import DistContext
from ct_core.train.trainer import Trainer

CHOICES = sorted(p.stem for p in (recipes_dir() / "compression").glob("*.yaml"))
#: Choices whose whole loss is the LM loss: DDP must equal one process exactly.
# (An auxiliary loss is a mean per micro-batch, which depends on how lanes are grouped.)
NO_AUX = {"conv_bptt", "max_pool", "mean_pool", "most_used", "none"}
#: A run of its own beside the compression choices: mean pooling with an adaptive softmax.
ADAPTIVE = "adaptive_softmax"
NO_AUX.add(ADAPTIVE)
CHOICES.append(ADAPTIVE)
STEPS = 3
WORLD = 2


def choice_overrides(choice: str) -> list[str]:
    if choice == ADAPTIVE:
        return ["compression=mean_pool", "+model.adaptive_cutoffs=[8,16,31]", "+model.adaptive_div=2",
                "model.tie_embeddings=true"]
    return [f"compression={choice}"]


def make_trainer(run_dir, choice, ctx=None):
    raw = compose_recipe(["experiment=smoke/synthetic", *choice_overrides(choice), f"trainer.steps={STEPS}",
                          "trainer.batch_size=4", "trainer.grad_accum=2", "trainer.threads=1",
                          "trainer.eval_every=100", "trainer.save_every=100", "trainer.sample_tokens=0",
                          "trainer.eval_sample_tokens=0"], "test")
    cfg, frontend = build_run(raw)
    return Trainer(cfg, frontend, run_dir, ctx)


def worker(rank, store, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        for choice in CHOICES:
            trainer = make_trainer(out_dir / choice, choice, DistContext(rank, WORLD, rank))
            for _ in range(STEPS):
                assert trainer.train_step() is not None
            torch.save(trainer.model.state_dict(), out_dir / f"{choice}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(out / "store"), out), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("choice", CHOICES)
def test_choice_trains_under_ddp(ddp_weights, tmp_path, choice):
    ranks = [torch.load(ddp_weights / f"{choice}_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = make_trainer(tmp_path, choice)
    start = {n: p.detach().clone() for n, p in single.model.state_dict().items()}
    # Every name of a tied tensor (the adaptive softmax shares the input's tables).
    trainable = {n for n, p in single.model.named_parameters(remove_duplicate=False) if p.requires_grad}
    for _ in range(STEPS):
        single.train_step()
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name  # every gradient was reduced
        moved = not torch.equal(value, start[name])
        if name not in trainable:
            assert not moved, name
        elif choice != ADAPTIVE:  # the adaptive model's one-word cluster may see no target in 3 steps
            assert moved, name
        if choice in NO_AUX:
            assert torch.allclose(value, single.model.state_dict()[name], atol=1e-6, rtol=1e-5), name
