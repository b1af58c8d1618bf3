"""What ``ct-export`` writes loads back: ``ct_core.load_model`` and
``ct-sample``/``ct-eval`` read an export as they read the checkpoint, and
give the same model, the same greedy samples and the same evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ct_core
from ct_core.errors import CheckpointError
from ct_core.model.sampling import generate
from ct_core.train.checkpoint import load_checkpoint
from ct_core.train.export_format import export_metadata, read_export

from tests.conftest import run_cli
from tests.reliability.conftest import AUDIO, SMOKE, assert_one_line_error
from tests.text.conftest import english

TEXT = ["experiment=smoke/synthetic", "data=text_file", "trainer.steps=8", "trainer.save_every=8",
        "trainer.eval_every=8", "trainer.log_every=4", "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0"]
AUDIO_RUN = [*AUDIO, "trainer.steps=4", "trainer.save_every=4", "trainer.eval_every=4", "trainer.log_every=2",
             "trainer.batch_size=2", "trainer.eval_max_batches=2", "trainer.sample_tokens=0",
             "trainer.eval_sample_tokens=0"]


def trained(tmp_path_factory, name: str, overrides: list[str]) -> tuple[Path, Path]:
    """A short training run's checkpoint and its export."""
    root = tmp_path_factory.mktemp(name)
    run_cli("ct-train", *overrides, f"hydra.run.dir={root / 'run'}", cwd=root)
    ckpt = root / "run" / "checkpoints" / "last.pt"
    run_cli("ct-export", str(ckpt), str(root / "model.safetensors"))
    return ckpt, root / "model.safetensors"


@pytest.fixture(scope="module")
def text_pair(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    corpus.write_text(english(1500, seed=7))
    return trained(tmp_path_factory, "export_text", [*TEXT, f"data.path={corpus}"])


@pytest.fixture(scope="module")
def audio_pair(tmp_path_factory):
    return trained(tmp_path_factory, "export_audio", AUDIO_RUN)


@pytest.fixture(scope="module")
def smoke_pair(tmp_path_factory):
    return trained(tmp_path_factory, "export_smoke", [*SMOKE, "trainer.steps=6", "trainer.save_every=6"])


def test_the_export_carries_recipe_front_end_and_weights(text_pair):
    ckpt, export = text_pair
    payload, exported = load_checkpoint(ckpt), read_export(export)
    assert exported["config"] == payload["config"] and exported["step"] == payload["step"]
    assert exported["frontend"] == payload["frontend"] == {"tokenizer": "bytes"}
    assert exported["package_version"] == payload["package_version"]
    assert exported["model"].keys() == payload["model"].keys()
    assert all(torch.equal(exported["model"][k], payload["model"][k]) for k in payload["model"])
    assert load_file(str(export)).keys() == payload["model"].keys()  # the tensors are the model's, nothing else


def test_front_end_tensors_survive_the_metadata(tmp_path):
    proto = torch.frombuffer(bytearray(b"\x00\x01sentencepiece\xff" * 50), dtype=torch.uint8)
    state = {"tokenizer": "sentencepiece", "sentencepiece_model": proto, "sizes": [1, 2], "none": None,
             "empty": torch.zeros(0, dtype=torch.uint8), "floats": torch.tensor([[1.5, -2.0]], dtype=torch.float64)}
    payload = {"config": {"data": {"frontend": "text"}}, "frontend": state, "step": 3, "package_version": "x"}
    metadata = export_metadata(payload)
    assert all(isinstance(v, str) for v in metadata.values())
    save_file({"w": torch.ones(2)}, str(tmp_path / "m.safetensors"), metadata=metadata)
    back = read_export(tmp_path / "m.safetensors")["frontend"]
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
        else:
            assert back[key] == value, key


@pytest.mark.parametrize("pair", ["text_pair", "audio_pair"])
def test_load_model_gives_the_checkpoints_model_from_either_file(pair, request):
    ckpt, export = request.getfixturevalue(pair)
    a, b = ct_core.load_model(ckpt), ct_core.load_model(export)
    for model in (a, b):
        assert not model.training and {p.device.type for p in model.parameters()} == {"cpu"}
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    prompt = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        greedy = [generate(m, prompt, 24, temperature=0.0) for m in (a, b)]
    assert torch.equal(greedy[0], greedy[1])


@pytest.mark.parametrize("pair,args,suffix", [
    ("text_pair", ["--prompt", "The ", "--tokens", "40"], ".txt"),
    ("audio_pair", ["--seconds", "0.05"], ".wav"),
])
def test_ct_sample_on_the_export_writes_the_checkpoints_greedy_sample(pair, args, suffix, request, tmp_path):
    ckpt, export = request.getfixturevalue(pair)
    outs = []
    for source in (ckpt, export):
        out = tmp_path / f"{source.stem}{suffix}"
        run_cli("ct-sample", str(source), *args, "--temperature", "0", "--out", str(out))
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and len(outs[0]) > 40


def test_ct_eval_on_the_export_measures_what_the_checkpoint_measures(smoke_pair):
    ckpt, export = smoke_pair
    reports = [json.loads(run_cli("ct-eval", str(p), "split=valid").stdout.splitlines()[-1]) for p in (ckpt, export)]
    assert reports[1]["checkpoint"] == str(export) and reports[1]["step"] == reports[0]["step"] == 6
    assert {k: v for k, v in reports[0].items() if k != "checkpoint"} == \
        {k: v for k, v in reports[1].items() if k != "checkpoint"}
    assert (export.parent / "eval_valid.json").is_file()


@pytest.mark.parametrize("dropped", [("config",), ("frontend",), ("config", "frontend")])
def test_an_export_missing_its_recipe_is_refused_in_one_line(smoke_pair, tmp_path, dropped):
    _, export = smoke_pair
    from safetensors import safe_open

    with safe_open(str(export), framework="pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k not in dropped}
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(export)), str(bare), metadata=metadata)
    expected = (f"{bare}: this export lacks {' and '.join(dropped)} in its metadata, so the model cannot be "
                "rebuilt from it; export the .pt checkpoint again with ct-export, or pass the checkpoint itself")
    with pytest.raises(CheckpointError) as info:
        ct_core.load_model(bare)
    assert str(info.value) == expected
    for prog, args in (("ct-sample", ["--tokens", "2"]), ("ct-eval", [])):
        err = assert_one_line_error(run_cli(prog, str(bare), *args, check=False))
        assert err == f"{prog}: error: {expected}"


def test_resuming_from_an_export_says_it_needs_the_checkpoint(smoke_pair, tmp_path):
    _, export = smoke_pair
    proc = run_cli("ct-train", *SMOKE, f"resume={export}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                   check=False)
    assert_one_line_error(proc, str(export), "safetensors export", "ct-eval and ct-sample read it", ".pt checkpoint")
