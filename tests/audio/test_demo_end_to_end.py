"""The default speech demo on a cut-down setting, through the console
scripts: training lowers the loss, the run writes a WAV of the requested
length and rate with its spectrogram, ct-eval counts every sample once, and
priming continues a real recording."""

import json
import math

import numpy as np
import pytest
import soundfile as sf

from ct_audio.mulaw import mulaw_decode, mulaw_encode
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # runs the console scripts as subprocesses

CUT_DOWN = ["model.n_layers=2", "model.d_model=48", "model.n_heads=2", "model.d_ff=96", "memory.seq_len=64",
            "memory.mem_len=64", "memory.cmem_len=32", "trainer.steps=40", "trainer.log_every=10",
            "trainer.eval_every=20", "trainer.eval_max_batches=5", "trainer.save_every=40", "trainer.sample_tokens=800", "trainer.eval_sample_tokens=200", "optim.lr=3e-3", "optim.warmup_steps=5"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo")
    proc = run_cli("ct-train", *CUT_DOWN, f"hydra.run.dir={run_dir}", cwd=run_dir)
    return run_dir, proc


def test_demo_trains_and_writes_audio(demo_run):
    run_dir, proc = demo_run
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train" and "ce" in r]
    # Uniform guessing over 256 codes costs ln 256 = 5.55 nats.
    assert train[-1]["ce"] < math.log(256) - 0.5 and train[-1]["ce"] < train[0]["ce"]
    evals = [r for r in records if r["split"] == "valid"]
    # The mid-run (partial) evaluation and the final one name the metric alike.
    assert [r["step"] for r in evals] == [20, 40]
    assert all("bits_per_sample" in r and "bits_per_token" not in r for r in evals)
    valid = evals[-1]
    assert {"bits_per_sample", "trigram_bits", "unigram_bits"} <= valid.keys()
    assert valid["bits_per_sample"] < valid["unigram_bits"]
    wavs = sorted((run_dir / "samples").rglob("*.wav"))
    assert len(wavs) == 1 and wavs[0].with_suffix(".png").is_file()
    info = sf.info(wavs[0])
    assert info.samplerate == 8000 and info.frames == 800 and info.subtype == "PCM_16"  # trainer.sample_tokens
    assert "next: ct-sample" in proc.stdout


def test_evaluation_logs_audio_and_spectrograms_to_tensorboard(demo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = demo_run
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"audio": 0, "images": 0}).Reload()
    assert events.Tags()["audio"] and events.Tags()["images"]
    assert "valid/bits_per_sample" in events.Tags()["scalars"]


def test_eval_counts_every_sample_once(demo_run):
    run_dir, _ = demo_run
    proc = run_cli("ct-eval", str(run_dir / "checkpoints" / "last.pt"), "split=valid")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    from ct_core.data.frontend import build_frontend

    fe = build_frontend({"frontend": "audio", "corpus": "demo", "sample_rate": 8000, "valid_fraction": 0.1,
                         "test_fraction": 0.1})
    expected = sum(len(d) - 1 for d in fe.documents("valid"))
    assert report["n_tokens"] == expected
    assert math.isclose(report["bits_per_sample"], report["nll_nats"] / math.log(2), rel_tol=1e-12)


def test_priming_continues_the_given_recording(demo_run, tmp_path):
    run_dir, _ = demo_run
    rate = 8000
    t = np.arange(rate) / rate
    prime = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(tmp_path / "prime.wav", prime, rate, subtype="PCM_16")
    out = tmp_path / "cont.wav"
    run_cli("ct-sample", str(run_dir / "checkpoints" / "last.pt"), "--prime", str(tmp_path / "prime.wav"),
            "--prime-seconds", "0.25", "--seconds", "0.1", "--seed", "3", "--out", str(out))
    audio, sr = sf.read(out, dtype="float32")
    assert sr == rate and len(audio) == 2000 + 800
    # The clip opens with the μ-law-quantised priming audio, unchanged.
    head = sf.read(tmp_path / "prime.wav", dtype="float32")[0][:2000]
    want = mulaw_decode(mulaw_encode(head)).astype(np.float32)
    assert np.allclose(audio[:2000], want, atol=1.5 / 32768)
    assert out.with_suffix(".png").is_file()
