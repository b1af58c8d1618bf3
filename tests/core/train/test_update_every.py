"""The paper's reduced update frequency: one optimizer update accumulates
consecutive segments of the same lanes, memories carried, and its gradient
is that of the mean loss over all their target tokens."""

import copy

import pytest
import torch
import torch.nn.functional as F

from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.data.stream_batcher import IGNORE_INDEX
from ct_core.train.trainer import Trainer


def make_trainer(tmp_path, *overrides):
    raw = compose_recipe(["experiment=smoke/synthetic", "trainer.steps=10", "trainer.eval_every=100",
                          "trainer.save_every=100", "trainer.sample_tokens=0", "optim.clip_norm=null",
                          *overrides], "test")
    cfg, fe = build_run(raw)
    return Trainer(cfg, fe, tmp_path)


@pytest.mark.parametrize("compression,grad_accum", [("conv_attention", 1), ("conv_bptt", 2), ("most_used", 1)])
def test_accumulated_update_equals_the_summed_segment_gradients(tmp_path, compression, grad_accum):
    trainer = make_trainer(tmp_path, f"compression={compression}", "trainer.update_every=4",
                           "trainer.update_every_after=1", f"trainer.grad_accum={grad_accum}")
    trainer.train_step()  # step 0: a plain one-segment update
    assert trainer.segments_per_update() == 4
    model, batcher = copy.deepcopy(trainer.model), copy.deepcopy(trainer.batcher)
    memories = list(trainer.memories)
    captured = {}
    step = trainer.optimizer.step

    def capture(*args, **kwargs):
        captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = capture
    trainer.train_step()

    batches = [next(batcher) for _ in range(4)]
    n_total = sum(b.n_targets for b in batches)
    weight = trainer.cfg.optim.compression_loss_weight
    for batch in batches:  # each segment's own gradient, summed
        for i, mb in enumerate(batch.split(grad_accum)):
            out = model(mb.x, memories[i], mb.reset)
            ce = F.cross_entropy(out.logits.flatten(0, 1), mb.y.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum")
            (ce / n_total + weight * out.aux_loss / (4 * grad_accum)).backward()
            memories[i] = out.memory
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert captured.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.allclose(captured[name], grad, atol=1e-7, rtol=1e-5), name


def test_updates_take_more_segments_from_update_every_after(tmp_path):
    trainer = make_trainer(tmp_path, "trainer.update_every=3", "trainer.update_every_after=2")
    consumed = []
    for _ in range(4):
        before = trainer.tokens_seen
        trainer.train_step()
        consumed.append(round((trainer.tokens_seen - before) / (4 * 32)))  # 4 lanes x 32 tokens
    assert consumed == [1, 1, 3, 3] and trainer.step == 4
