"""A cut-down text/shakespeare_cpu run through the console scripts: bpc
falls, ct-eval reports bpc, ct-sample continues a prompt that it keeps
unchanged as the prefix of its output."""

import json
import math

import pytest

from tests.conftest import SHARED_DATA, run_cli

pytestmark = pytest.mark.slow  # runs the console scripts as subprocesses

CUT_DOWN = ["experiment=text/shakespeare_cpu", "model.n_layers=2", "model.d_model=64", "model.n_heads=2",
            "model.d_ff=128", "model.dropout=0.0", "memory.seq_len=32", "memory.mem_len=32", "memory.cmem_len=16",
            "trainer.steps=60", "trainer.log_every=10", "trainer.eval_every=60", "trainer.save_every=60",
            "trainer.sample_tokens=40", "optim.warmup_steps=5", "optim.lr=3e-3"]


def corpus(tmp_path_factory):
    real = SHARED_DATA / "text" / "tinyshakespeare.txt"
    if real.is_file():
        return real
    # Without ../shared: a small play-like text the test writes itself.
    lines = [f"{name}:\nI pray thee, {word}, be {mood} tonight.\n\n"
             for name in ("ROMEO", "JULIET", "NURSE", "TYBALT") for word in ("sir", "love", "friend")
             for mood in ("merry", "gentle", "silent", "bold")]
    path = tmp_path_factory.mktemp("text") / "play.txt"
    path.write_text("".join(lines) * 40)
    return path


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("shakespeare")
    run_cli("ct-train", *CUT_DOWN, f"data.path={corpus(tmp_path_factory)}", f"hydra.run.dir={run_dir}", cwd=run_dir)
    return run_dir


def test_training_lowers_bpc(text_run):
    records = [json.loads(x) for x in (text_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train" and "ce" in r]
    valid = [r for r in records if r["split"] == "valid"][-1]
    assert train[-1]["ce"] < train[0]["ce"] - 0.3
    # Uniform bytes cost 8 bits; a model that learned the characters is far below.
    assert valid["bpc"] < 4.5
    assert math.isclose(valid["bpc"], valid["nll"] / math.log(2), rel_tol=1e-9)


def test_eval_and_sample_continue_the_prompt(text_run, tmp_path):
    ckpt = text_run / "checkpoints" / "last.pt"
    report = json.loads(run_cli("ct-eval", str(ckpt)).stdout.strip().splitlines()[-1])
    assert report["split"] == "valid" and report["bpc"] > 0
    out = tmp_path / "sample.txt"
    prompt = "ROMEO:\nWhat light"
    proc = run_cli("ct-sample", str(ckpt), "--prompt", prompt, "--tokens", "50", "--seed", "2", "--out", str(out))
    text = out.read_bytes()
    assert text.startswith(prompt.encode()) and len(text) == len(prompt.encode()) + 50
    assert proc.stdout.startswith(prompt)  # streamed to the terminal as it was drawn
