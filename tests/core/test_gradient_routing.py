"""Which parameters each loss reaches (DESIGN §6 item 5)."""

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


def test_stored_memory_is_detached_except_bptt_cmem():
    _, out, _ = run("attention")
    assert not out.memory.mem.requires_grad and not out.memory.cmem.requires_grad
    _, out, _ = run("bptt")
    assert not out.memory.mem.requires_grad and out.memory.cmem.requires_grad
