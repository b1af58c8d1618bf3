"""Every recipe composes and validates without building a model, the paper
recipes have the paper's shapes, and ``import ct_core`` stays front-end free."""

import subprocess
import sys

import pytest

from ct_core.cli.common import compose_recipe, recipes_dir
from ct_core.errors import ConfigError
from ct_core.data.frontend import frontend_class
from ct_core.options import build_options
from ct_core.train.run_config import RunConfig

EXPERIMENTS = sorted(str(p.relative_to(recipes_dir() / "experiment").with_suffix(""))
                     for p in (recipes_dir() / "experiment").rglob("*.yaml"))
# Paths the paper recipes require; nothing is read, only validated.
REQUIRED = {"root": "/data/corpus", "path": "/data/file"}


def compose(experiment):
    try:
        return compose_recipe([f"experiment={experiment}"], "test")
    except ConfigError as err:
        key = next(k for k in REQUIRED if f"data.{k} is required" in str(err))
        return compose_recipe([f"experiment={experiment}", f"data.{key}={REQUIRED[key]}"], "test")


def test_the_expected_experiments_exist():
    for name in ["audio/demo", "audio/speech_ct", "audio/speech_txl", "text/enwik8_ct", "text/enwik8_txl",
                 "text/pg19_ct", "text/pg19_txl", "text/shakespeare_cpu", "text/wt103_ct", "text/wt103_txl",
                 "text/wikitext_cpu", "smoke/synthetic"]:
        assert name in EXPERIMENTS


#: The vocabulary each recipe's data gives (word vocabularies are fixed by the corpus).
VOCAB = {"text/wt103_ct": 267_735, "text/wt103_txl": 267_735, "text/wikitext_cpu": 13_777}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_validates(experiment):
    raw = compose(experiment)
    cfg = RunConfig.from_dict(raw, vocab_size=VOCAB.get(experiment, 256))
    assert cfg.experiment_name == experiment
    data = dict(raw["data"])
    build_options(frontend_class(data.pop("frontend")).Config, data, "data")
    text = (recipes_dir() / "experiment" / f"{experiment}.yaml").read_text().splitlines()
    assert text[1].startswith("#") and any("ct-train" in line for line in text[:8]) and "Expect" in "\n".join(text[:10])


PAPER = {
    "audio/speech_ct": dict(n_layers=20, seq_len=768, mem_len=768, cmem_len=768, compression_rate=4,
                            compression="conv", compression_loss="attention"),
    "audio/speech_txl": dict(n_layers=20, seq_len=768, mem_len=1536, cmem_len=0),
    "text/enwik8_ct": dict(n_layers=24, d_model=1024, n_heads=8, d_ff=3072, seq_len=768, mem_len=768,
                           cmem_len=1152, compression_rate=3),
    "text/enwik8_txl": dict(n_layers=24, d_model=1024, seq_len=768, mem_len=1920, cmem_len=0),
    "text/pg19_ct": dict(n_layers=36, seq_len=512, mem_len=512, cmem_len=512, compression_rate=2),
    "text/pg19_txl": dict(n_layers=36, seq_len=512, mem_len=1024, cmem_len=0),
    # Section 5.3: c = 4 (the appendix says 3); Transformer-XL's WikiText-103 adaptive input and softmax.
    "text/wt103_ct": dict(n_layers=18, d_model=1024, n_heads=16, d_ff=4096, seq_len=512, mem_len=512, cmem_len=512,
                          compression_rate=4, compression="conv", compression_loss="attention",
                          adaptive_cutoffs=(20000, 40000, 200000), adaptive_div=4, tie_embeddings=True,
                          vocab_size=267_735),
    "text/wt103_txl": dict(n_layers=18, d_model=1024, n_heads=16, d_ff=4096, seq_len=512, mem_len=1024, cmem_len=0,
                           adaptive_cutoffs=(20000, 40000, 200000), adaptive_div=4, tie_embeddings=True,
                           vocab_size=267_735),
}


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_recipes_have_the_paper_shapes(experiment):
    raw = compose(experiment)
    cfg = RunConfig.from_dict(raw, vocab_size=VOCAB.get(experiment, 256))
    if raw["data"].get("tokenizer") == "words":
        assert raw["data"]["vocab_size"] == VOCAB[experiment]  # the size the data recipe promises
    for key, value in PAPER[experiment].items():
        assert getattr(cfg.model, key) == value, key


def test_speech_model_is_about_40m_parameters():
    cfg = RunConfig.from_dict(compose("audio/speech_ct"), vocab_size=256)
    import torch

    with torch.device("meta"):
        from ct_core.model.lm import CompressiveTransformerLM

        n = CompressiveTransformerLM(cfg.model).num_parameters()
    assert 36e6 <= n <= 44e6, n


def test_enwik8_evaluates_with_longer_compressed_memory():
    cfg = RunConfig.from_dict(compose("text/enwik8_ct"), vocab_size=256)
    assert cfg.eval_cmem_len == 3072 and cfg.eval_mem_len == 768


def test_wt103_recipes_train_as_the_paper_and_evaluate_as_it_reports():
    ct, txl = (RunConfig.from_dict(compose(f"text/wt103_{m}"), vocab_size=267_735) for m in ("ct", "txl"))
    assert (ct.eval_mem_len, ct.eval_cmem_len) == (500, 1500)  # the paper's 17.1
    assert (txl.eval_mem_len, txl.eval_cmem_len) == (1024, 0)
    for cfg in (ct, txl):
        assert cfg.trainer.batch_size == 128 and cfg.optim.warmup_steps == 16000 and cfg.optim.decay_steps == 500000
        assert cfg.model.mem_len + cfg.model.cmem_len == 1024  # equal attended slots in training
    assert compose("text/wt103_ct")["data"]["corpus"] == "wikitext103"


def test_unknown_keys_are_rejected_by_section():
    raw = compose("smoke/synthetic")
    with pytest.raises(ConfigError, match="trainer.stepz is not an option of trainer"):
        RunConfig.from_dict({**raw, "trainer": {**raw["trainer"], "stepz": 1}}, vocab_size=32)
    with pytest.raises(ConfigError, match="memory.mem_size is not an option of memory"):
        RunConfig.from_dict({**raw, "memory": {**raw["memory"], "mem_size": 1}}, vocab_size=32)


def test_import_ct_core_loads_no_front_end_library():
    code = ("import sys, ct_core, ct_core.train.trainer, ct_core.model.sampling, ct_core.data.frontend; "
            "bad = [m for m in ('torchaudio', 'librosa', 'sentencepiece', 'ct_audio', 'ct_text') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
