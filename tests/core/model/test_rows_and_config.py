"""Row isolation, reset, and configuration errors (DESIGN §6 items 6, 10)."""

import pytest
import torch

from ct_core import CompressiveTransformerLM, ConfigError, ModelConfig


def model_for(compression="conv", loss="attention"):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layers=2, d_model=16, n_heads=2, d_ff=32, seq_len=8, mem_len=8,
                      cmem_len=4, compression_rate=2, compression=compression, compression_loss=loss)
    return CompressiveTransformerLM(cfg).eval()


@pytest.mark.parametrize("compression,loss", [("conv", "attention"), ("most_used", "none")])
def test_rows_never_interact(compression, loss):
    model = model_for(compression, loss)
    torch.manual_seed(1)
    tokens = torch.randint(0, 40, (3, 40))
    with torch.no_grad():
        mem_all, mem_one = None, None
        for s in range(5):
            seg = tokens[:, s * 8 : (s + 1) * 8]
            out_all = model(seg, mem_all)
            out_one = model(seg[1:2], mem_one)
            mem_all, mem_one = out_all.memory, out_one.memory
            assert torch.allclose(out_all.logits[1:2], out_one.logits, atol=1e-5)


def test_reset_row_equals_fresh_start_and_leaves_others():
    model = model_for()
    torch.manual_seed(2)
    tokens = torch.randint(0, 40, (3, 48))
    reset_at = 3
    with torch.no_grad():
        mem, mem_plain, mem_fresh = None, None, None
        for s in range(6):
            seg = tokens[:, s * 8 : (s + 1) * 8]
            reset = torch.tensor([False, s == reset_at, False])
            out = model(seg, mem, reset=reset)
            plain = model(seg, mem_plain)
            mem, mem_plain = out.memory, plain.memory
            assert torch.allclose(out.logits[[0, 2]], plain.logits[[0, 2]], atol=1e-6)
            if s >= reset_at:
                fresh = model(seg[1:2], mem_fresh)
                mem_fresh = fresh.memory
                assert torch.allclose(out.logits[1:2], fresh.logits, atol=1e-5)
        assert not torch.allclose(out.logits[1:2], plain.logits[1:2], atol=1e-3)


BASE = dict(vocab_size=10, n_layers=1, d_model=8, n_heads=2, d_ff=16, seq_len=8, mem_len=8, cmem_len=4,
            compression_rate=2, compression="conv", compression_loss="attention")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"seq_len": 9}, "model.seq_len=9 must be a multiple of model.compression_rate=2"),
        ({"d_model": 10, "n_heads": 3}, "model.d_model=10 must be divisible by model.n_heads=3"),
        ({"n_layers": 0}, "model.n_layers=0 must be a positive integer"),
        ({"d_ff": -4}, "model.d_ff=-4 must be a positive integer"),
        ({"mem_len": -1}, "model.mem_len=-1 must be an integer >= 0"),
        ({"compression": "zip"}, "model.compression='zip' is unknown; allowed: max_pool, mean_pool, conv, dilated_conv, most_used"),
        ({"compression_loss": "l1"}, "model.compression_loss='l1' is unknown; allowed: attention, autoencoding, bptt, none"),
        ({"compression": "mean_pool", "compression_loss": "autoencoding"}, "model.compression_loss='autoencoding' trains the compressor, but model.compression='mean_pool' has no parameters"),
        ({"compression": "most_used", "compression_loss": "attention"}, "model.compression='most_used' has no parameters"),
        ({"norm": "mid"}, "model.norm='mid' is unknown; allowed: pre, post"),
        ({"dropout": 1.5}, "model.dropout=1.5 must lie in [0, 1)"),
    ],
)
def test_config_errors_name_the_option(change, message):
    cfg = ModelConfig(**{**BASE, **change})
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_no_compression_accepts_any_rate():
    cfg = ModelConfig(**{**BASE, "cmem_len": 0, "seq_len": 9, "compression": "mean_pool"})
    assert cfg.validate() is cfg and not cfg.compresses


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="model.layers is not a model option"):
        ModelConfig.from_dict({**BASE, "layers": 3})
