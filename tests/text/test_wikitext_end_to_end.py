"""A cut-down text/wikitext_cpu run through the console scripts on a
WikiText-like corpus the test writes (word chains a model learns in a few
steps; the shared sample's round trip is in test_wikitext.py): validation
perplexity ends below the unigram's, ct-eval reports ppl over every token of
the test split, and ct-sample continues a prompt with an unknown word from
the checkpoint alone (corpus and prepared data gone)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from ct_text.vocabulary import UNK, WordVocabulary
from tests.conftest import run_cli
from tests.text.handmade_wikitext import wikitext_lines, write_wikitext, zip_wikitext

pytestmark = pytest.mark.slow  # runs the console scripts as subprocesses

def cut_down(vocab_size: int) -> list[str]:
    # Adaptive clusters scaled to the small vocabulary: a head of a quarter, two tails.
    return ["experiment=text/wikitext_cpu", f"data.vocab_size={vocab_size}",
            f"model.adaptive_cutoffs=[{vocab_size // 4},{vocab_size // 2}]", "model.n_layers=2", "model.d_model=64",
            "model.n_heads=2", "model.d_ff=128", "memory.seq_len=32", "memory.mem_len=32", "memory.cmem_len=16",
            "trainer.steps=60", "trainer.batch_size=8", "eval.batch_size=8", "trainer.log_every=10",
            "trainer.eval_every=60", "trainer.save_every=60", "trainer.sample_tokens=20", "optim.warmup_steps=5",
            "optim.lr=3e-3"]


@pytest.fixture(scope="module")
def word_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("wikitext")
    splits = {"train": wikitext_lines(150, 0), "valid": wikitext_lines(20, 1), "test": wikitext_lines(20, 2)}
    write_wikitext(base / "corpus", splits)
    vocab = WordVocabulary.build([splits["train"].encode()])
    run_dir = base / "run"
    run_cli("ct-train", *cut_down(vocab.vocab_size), f"data.root={base / 'corpus'}", f"hydra.run.dir={run_dir}",
            cwd=base)
    return SimpleNamespace(base=base, run_dir=run_dir, splits=splits, vocab=vocab)


def test_training_ends_below_the_unigram(word_run):
    records = [json.loads(x) for x in (word_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train" and "ce" in r]
    valid = [r for r in records if r["split"] == "valid"][-1]
    assert train[-1]["ce"] < train[0]["ce"] - 0.5
    assert valid["ppl"] < 0.5 * valid["unigram_ppl"], valid  # the word chains are learnt
    assert math.isclose(valid["ppl"], math.exp(valid["nll"]), rel_tol=1e-9)


def test_eval_reports_ppl_over_every_predicted_token(word_run):
    ckpt = word_run.run_dir / "checkpoints" / "last.pt"
    report = json.loads(run_cli("ct-eval", str(ckpt), "split=test").stdout.strip().splitlines()[-1])
    # Every token of the test split but its first is predicted, <eos> included.
    assert report["n_tokens"] == len(word_run.vocab.encode(word_run.splits["test"].encode())) - 1
    assert math.isfinite(report["ppl"]) and 1.0 < report["ppl"] < report["unigram_ppl"]


def test_checkpoint_holds_the_vocabulary_and_sampling_needs_no_corpus(word_run, tmp_path, monkeypatch):
    ckpt = word_run.run_dir / "checkpoints" / "last.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["frontend"]
    assert WordVocabulary.from_bytes(state["vocabulary"].numpy().tobytes()).words == word_run.vocab.words
    shutil.rmtree(word_run.base / "corpus")
    monkeypatch.setenv("CT_CACHE_DIR", str(tmp_path / "empty_cache"))
    out = tmp_path / "sample.txt"
    proc = run_cli("ct-sample", str(ckpt), "--prompt", "Ada Zorblax apples", "--tokens", "25", "--seed", "1",
                   "--out", str(out))
    assert f"note: 1 prompt word(s) not in the vocabulary, read as {UNK}: 'Zorblax'\n" in proc.stderr
    assert proc.stdout.startswith(f"Ada {UNK} apples")
    text = out.read_text()
    assert text.startswith(f"Ada {UNK} apples")
    ids, unknown = word_run.vocab.encode_prompt(text)
    assert len(ids) == 3 + 25 and not unknown  # every sampled token decodes to a known word or a newline


def test_md5_mismatch_is_one_line_from_the_console_and_the_option_accepts_it(tmp_path):
    splits = {"train": wikitext_lines(10, 0), "valid": wikitext_lines(2, 1), "test": wikitext_lines(2, 2)}
    zipped = zip_wikitext(tmp_path / "wikitext-103-v1.zip", splits)
    found = hashlib.md5(zipped.read_bytes()).hexdigest()
    args = ["experiment=text/wt103_ct", f"data.root={zipped}"]
    proc = run_cli("ct-prepare", *args, check=False)
    assert proc.returncode == 2 and proc.stderr == (
        f"ct-prepare: error: {zipped}: md5 is {found}, expected 9ddaacaf6af0710eda8c456decff7832 "
        f"({zipped.stat().st_size:,} bytes); use the original wikitext-103-v1.zip or set "
        "data.accept_md5_mismatch=true to use it anyway\n")
    n = WordVocabulary.build([splits["train"].encode()]).vocab_size
    proc = run_cli("ct-prepare", *args, "data.accept_md5_mismatch=true", f"data.vocab_size={n}",
                   f"model.adaptive_cutoffs=[{n // 4},{n // 2}]")
    assert f"vocabulary: {n}" in proc.stdout and "used anyway (data.accept_md5_mismatch=true)" in proc.stderr
