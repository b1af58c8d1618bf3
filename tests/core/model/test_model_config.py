"""ModelConfig: one-line errors naming each option by its recipe group
(``memory.seq_len``), type checks, and the compression names of the table."""

import pytest

from ct_core import ConfigError, ModelConfig
from ct_core.model.compression import COMPRESSIONS, COMPRESSORS, PARAMETRIC_COMPRESSIONS
from ct_core.model.config import recipe_key
from ct_core.options import build_options


BASE = dict(vocab_size=10, n_layers=1, d_model=8, n_heads=2, d_ff=16, seq_len=8, mem_len=8, cmem_len=4,
            compression_rate=2, compression="conv", compression_loss="attention")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"seq_len": 9}, "memory.seq_len=9 must be a multiple of memory.compression_rate=2"),
        ({"d_model": 10, "n_heads": 3}, "model.d_model=10 must be divisible by model.n_heads=3"),
        ({"n_layers": 0}, "model.n_layers=0 must be a positive integer"),
        ({"d_ff": -4}, "model.d_ff=-4 must be a positive integer"),
        ({"mem_len": -1}, "memory.mem_len=-1 must be an integer >= 0"),
        ({"compression": "zip"}, "compression.compression='zip' is unknown; allowed: " + ", ".join(COMPRESSIONS)),
        ({"compression_loss": "l1"}, "compression.compression_loss='l1' is unknown; allowed: attention, autoencoding, bptt, none"),
        ({"compression": "mean_pool", "compression_loss": "autoencoding"}, "compression.compression_loss='autoencoding' trains the compressor, but compression.compression='mean_pool' has no parameters"),
        ({"compression": "most_used", "compression_loss": "attention"}, "compression.compression='most_used' has no parameters"),
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


def test_build_options_checks_keys_and_types_under_the_recipe_names():
    with pytest.raises(ConfigError, match="model.layers is not an option of model"):
        build_options(ModelConfig, {**BASE, "layers": 3}, recipe_key)
    with pytest.raises(ConfigError, match=r"memory.mem_len=1.5 must be an integer$"):
        build_options(ModelConfig, {**BASE, "mem_len": 1.5}, recipe_key)
    with pytest.raises(ConfigError, match=r"model.tie_embeddings='yes' must be true or false$"):
        build_options(ModelConfig, {**BASE, "tie_embeddings": "yes"}, recipe_key)
    cfg = build_options(ModelConfig, {**BASE, "dropout": 0}, recipe_key)
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)


def test_compression_names_come_from_the_compressor_table():
    assert COMPRESSIONS == tuple(COMPRESSORS)
    assert set(PARAMETRIC_COMPRESSIONS) == {name for name, cls in COMPRESSORS.items() if cls.has_parameters}
