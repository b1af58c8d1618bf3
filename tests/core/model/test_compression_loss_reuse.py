"""Algorithm 2 from the forward's tensors: the attention-reconstruction
loss that reuses the forward's queries and the evicted slots' keys and
values gives the loss and the compressor gradients of the previous
implementation, which projected them again (kept in
``tests/core/model/reference_alg2.py``), for pre- and post-LN, memories
shorter and longer than the segment, short segments whose evicted block is
padded, partly filled groups, rows with nothing evicted and reset rows; and
20 training steps through the trainer give the same losses."""

import copy
import types

import pytest
import torch

from ct_core import CompressiveTransformerLM, ModelConfig
from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.train.trainer import Trainer
from tests.core.model.reference_alg2 import reference_update_memory
from tests.core.model.reference_attention import use_reference_attention


def use_reference_alg2(model) -> None:
    """Compute the memory update and its loss on ``model`` with the previous code."""
    def update_memory(self, memory, hidden, usage=None, attended=None):
        return reference_update_memory(self, memory, hidden, usage)

    model.update_memory = types.MethodType(update_memory, model)


def make_model(norm: str, mem_len: int, compression: str) -> CompressiveTransformerLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layers=2, d_model=32, n_heads=4, d_ff=64, seq_len=8, mem_len=mem_len,
                      cmem_len=6, compression_rate=4, compression=compression, compression_loss="attention",
                      norm=norm, init_std=0.3)
    model = CompressiveTransformerLM(cfg).train()
    with torch.no_grad():  # a compressor far from mean pooling: a loss well above rounding
        for p in model.compressors.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)
    return model


def compressor_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# Segment lengths: 8 (full), 6 (evicted block padded by 2 slots to a
# multiple of c = 4). mem_len 5 < T (segment inputs are evicted too; groups
# straddle empty slots), 12 > T (the first segments evict empty slots only:
# rows weighted 0), 0 (every segment input is evicted at once).
SEGMENTS = [8, 6, 8, 8, 6]
RESETS = [(), (), (1,), (0, 2), ()]


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("mem_len", [5, 12, 0])
@pytest.mark.parametrize("compression", ["conv", "dilated_conv"])
def test_loss_and_compressor_gradients_equal_the_reprojecting_reference(norm, mem_len, compression):
    model = make_model(norm, mem_len, compression)
    ref = copy.deepcopy(model)
    use_reference_alg2(ref)
    g = torch.Generator().manual_seed(1)
    memory = memory_ref = None
    losses = []
    for t, reset_rows in zip(SEGMENTS, RESETS):
        tokens = torch.randint(0, 40, (3, t), generator=g)
        reset = torch.zeros(3, dtype=torch.bool)
        reset[list(reset_rows)] = True
        for m in (model, ref):
            m.zero_grad(set_to_none=True)
        out = model(tokens, memory, reset)
        out_ref = ref(tokens, memory_ref, reset)
        out.aux_loss.backward()
        out_ref.aux_loss.backward()
        losses.append(out.aux_loss.item())
        torch.testing.assert_close(out.aux_loss, out_ref.aux_loss, rtol=1e-6, atol=1e-9)
        grads, grads_ref = compressor_grads(model), compressor_grads(ref)
        assert grads.keys() == grads_ref.keys() and all(n.startswith("compressors.") for n in grads)
        for name in grads:
            scale = grads_ref[name].abs().max().item()
            torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-6, atol=1e-6 * scale, msg=lambda m: f"{name}: {m}")
        for a, b in zip((out.memory.mem, out.memory.cmem), (out_ref.memory.mem, out_ref.memory.cmem)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        memory, memory_ref = out.memory, out_ref.memory
    assert min(losses[1:]) > 1e-3  # losses well above rounding, so rtol means something


def test_update_memory_without_the_forward_tensors_projects_them():
    """Called directly (no forward's tensors), update_memory projects the
    queries and evicted keys/values itself and gives the same loss."""
    model = make_model("pre", 5, "conv")
    tokens = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(2))
    first = model(tokens[:, :8])
    captured = {}

    def capture(memory, hidden, usage=None, attended=None):
        captured.update(memory=memory, hidden=hidden, attended=attended)
        return type(model).update_memory(model, memory, hidden, usage, attended)

    model.update_memory = capture
    out = model(tokens[:, 8:], first.memory)
    del model.update_memory
    assert captured["attended"] is not None
    _, aux = model.update_memory(captured["memory"], captured["hidden"])
    torch.testing.assert_close(aux, out.aux_loss, rtol=1e-6, atol=1e-9)


def make_trainer(tmp_path, *overrides) -> Trainer:
    raw = compose_recipe(["experiment=smoke/synthetic", "trainer.steps=20", "trainer.eval_every=100",
                          "trainer.save_every=100", "trainer.sample_tokens=0", *overrides], "test")
    cfg, fe = build_run(raw)
    return Trainer(cfg, fe, tmp_path)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_twenty_training_steps_give_the_previous_losses(tmp_path, norm):
    """The smoke recipe (conv compression trained by Algorithm 2) through
    the trainer: the new attention and Algorithm 2 against the previous
    ones, 20 optimizer steps with memories carried."""
    new = make_trainer(tmp_path / "new", f"model.norm={norm}")
    old = make_trainer(tmp_path / "old", f"model.norm={norm}")
    use_reference_attention(old.model)
    use_reference_alg2(old.model)
    for step in range(20):
        a, b = new.train_step(), old.train_step()
        assert abs(a["loss"].item() - b["loss"].item()) <= 1e-5, step
        # The compression loss is small (1e-5 down to 1e-8) at this
        # initialisation: compare it relatively. The reference subtracts two
        # projected attention outputs of size ~1 whose difference is ~1e-4,
        # so its own rounding is ~1e-5 of the loss late in the run.
        aux, aux_ref = a["aux"].item(), b["aux"].item()
        assert abs(aux - aux_ref) <= 1e-4 * aux_ref and (aux_ref > 0 or step == 0), step
    assert new.step == old.step == 20
