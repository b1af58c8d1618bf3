"""ct-train / ct-eval / ct-sample / ct-export end to end through the console
scripts on the synthetic smoke recipe, and their one-line user errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # runs the console scripts as subprocesses

SMOKE = ["experiment=smoke/synthetic", "trainer.steps=60", "trainer.log_every=10"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    proc = run_cli("ct-train", *SMOKE, f"hydra.run.dir={run_dir}", cwd=run_dir)
    return run_dir, proc


def test_train_writes_checkpoint_metrics_and_events_and_loss_falls(smoke_run):
    run_dir, proc = smoke_run
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train" and "ce" in x]
    assert train[0]["step"] == 10 and train[-1]["step"] == 60
    # ln(32) = 3.47 at the start; the synthetic data is learnable.
    assert train[-1]["ce"] < 3.0 and train[-1]["ce"] < train[0]["ce"] - 0.3
    assert any(x["split"] == "valid" and "bits_per_token" in x for x in lines)
    assert "next: ct-sample" in proc.stdout
    samples = list((run_dir / "samples").rglob("*.txt"))
    assert len(samples) == 2 and all(len(p.read_text().split()) == 16 for p in samples)


def test_eval_prints_metrics_and_writes_json(smoke_run):
    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    proc = run_cli("ct-eval", str(ckpt), "split=test")
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["split"] == "test" and last["step"] == 60 and last["n_tokens"] > 0
    assert abs(last["bits_per_token"] - last["nll"] / 0.6931471805599453) < 1e-9
    assert json.loads((ckpt.parent / "eval_test.json").read_text()) == last


def test_sample_continues_the_prompt(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    out = tmp_path / "s.txt"
    run_cli("ct-sample", str(run_dir / "checkpoints" / "last.pt"), "--prompt", "3 4 5", "--tokens", "25",
            "--seed", "1", "--out", str(out))
    ids = [int(x) for x in out.read_text().split()]
    assert ids[:3] == [3, 4, 5] and len(ids) == 28 and all(0 <= i < 32 for i in ids)


def test_export_safetensors_matches_checkpoint(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    run_cli("ct-export", str(ckpt), str(tmp_path / "m.safetensors"))
    weights = load_file(tmp_path / "m.safetensors")
    model = torch.load(ckpt, weights_only=True)["model"]
    assert weights.keys() == model.keys() and all(torch.equal(weights[k], model[k]) for k in model)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_unknown_override_is_one_line(tmp_path):
    proc = run_cli("ct-train", "experiment=smoke/synthetic", "trainer.stepz=3", check=False, cwd=tmp_path)
    assert_one_line_error(proc, "trainer.stepz")


def test_missing_and_corrupted_checkpoints_are_one_line(tmp_path):
    assert_one_line_error(run_cli("ct-eval", str(tmp_path / "nope.pt"), check=False), "nope.pt", "no such checkpoint")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert_one_line_error(run_cli("ct-eval", str(bad), check=False), "bad.pt")
    assert_one_line_error(run_cli("ct-sample", str(bad), check=False), "bad.pt")


def test_resume_from_mismatching_checkpoint_is_one_line(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    proc = run_cli("ct-train", "experiment=smoke/synthetic", "model.d_model=48", f"hydra.run.dir={tmp_path}",
                   f"resume={run_dir / 'checkpoints' / 'last.pt'}", check=False, cwd=tmp_path)
    assert_one_line_error(proc, "model.d_model=32", "model.d_model=48")


def test_help_explains_with_an_example():
    for name in ("ct-train", "ct-eval", "ct-sample", "ct-prepare", "ct-export"):
        out = run_cli(name, "--help").stdout
        assert name in out and "example" in out.lower(), name
