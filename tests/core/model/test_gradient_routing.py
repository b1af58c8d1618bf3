"""Which parameters each compression loss reaches, and that bptt trains over many steps."""

import pytest
import torch
import torch.nn.functional as F

from ct_core import CompressiveTransformerLM, ModelConfig


def run(loss_name: str, compression: str = "conv", segments: int = 3):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=8, mem_len=8,
                      cmem_len=4, compression_rate=2, compression=compression, compression_loss=loss_name)
    model = CompressiveTransformerLM(cfg).train()
    tokens = torch.randint(0, 30, (2, 8 * (segments + 1)))
    memory = None
    for s in range(segments):
        model.zero_grad(set_to_none=True)
        out = model(tokens[:, s * 8 : (s + 1) * 8], memory)
        memory = out.memory
    return model, out, tokens[:, segments * 8 - 7 : segments * 8 + 1]


def touched(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def split(model):
    names = {n for n, _ in model.named_parameters()}
    comp = {n for n in names if n.startswith("compressors.")}
    dec = {n for n in names if n.startswith("decoders.")}
    return names, comp, dec


def lm_backward(out, targets):
    F.cross_entropy(out.logits.flatten(0, 1), targets.flatten()).backward()


@pytest.mark.parametrize("loss_name", ["attention", "autoencoding", "none"])
def test_lm_loss_reaches_everything_but_the_compressor(loss_name):
    model, out, y = run(loss_name)
    names, comp, dec = split(model)
    lm_backward(out, y)
    assert touched(model) == names - comp - dec


def test_attention_loss_trains_only_the_compressor():
    model, out, _ = run("attention")
    names, comp, _ = split(model)
    assert out.aux_loss.item() > 0
    out.aux_loss.backward()
    assert touched(model) == comp


def test_autoencoding_trains_compressor_and_decoder():
    model, out, _ = run("autoencoding", compression="dilated_conv")
    names, comp, dec = split(model)
    out.aux_loss.backward()
    assert dec and touched(model) == comp | dec


def test_bptt_lets_the_lm_loss_train_the_compressor():
    model, out, y = run("bptt")
    names, comp, _ = split(model)
    assert out.aux_loss.item() == 0.0
    lm_backward(out, y)
    assert touched(model) == names


def test_stored_memory_is_detached_and_bptt_defers_compression():
    for loss_name in ("attention", "autoencoding", "none", "bptt"):
        _, out, _ = run(loss_name)
        m = out.memory
        assert not m.mem.requires_grad and not m.cmem.requires_grad
        assert (m.pending is not None) == (loss_name == "bptt")
    assert not m.pending.requires_grad and m.pending.shape == (2, 2, 8, 16)


def test_bptt_survives_optimizer_steps():
    """The graph of a bptt step must not reach into the previous step (whose
    weights the optimizer has since changed in place)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=8, mem_len=8,
                      cmem_len=4, compression_rate=2, compression="conv", compression_loss="bptt")
    model = CompressiveTransformerLM(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 30, (2, 8 * 6 + 1))
    before = [p.detach().clone() for p in model.compressors.parameters()]
    memory = None
    for s in range(6):
        out = model(tokens[:, s * 8 : (s + 1) * 8], memory)
        lm_backward(out, tokens[:, s * 8 + 1 : (s + 1) * 8 + 1])
        opt.step()
        opt.zero_grad(set_to_none=True)
        memory = out.memory
    assert all(not torch.equal(a, b) for a, b in zip(before, model.compressors.parameters()))


def test_bptt_deferred_compression_equals_immediate_compression():
    """Deferring f_c to the next forward changes gradients, never values."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=8, mem_len=8,
                      cmem_len=4, compression_rate=2, compression="conv", compression_loss="bptt")
    model = CompressiveTransformerLM(cfg).eval()
    tokens = torch.randint(0, 30, (2, 40))
    deferred, immediate = None, None
    for s in range(5):
        seg = tokens[:, s * 8 : (s + 1) * 8]
        a = model(seg, deferred)  # gradients on: compression waits in pending
        with torch.no_grad():
            b = model(seg, immediate)  # no gradients: compressed at once
        deferred, immediate = a.memory, b.memory
        assert torch.allclose(a.logits, b.logits, atol=1e-6)
        assert deferred.pending is not None and immediate.pending is None
