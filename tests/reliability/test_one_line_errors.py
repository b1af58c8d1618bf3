"""Mistakes a new user makes end in one line that names the option or file
and says what to do (exit 2), and never in a traceback or a misleading hint."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from ct_core.errors import CheckpointError
from ct_core.train.checkpoint import export_safetensors, load_checkpoint

from tests.audio.conftest import tone, write
from tests.conftest import run_cli
from tests.reliability.conftest import (
    AUDIO, SMOKE, assert_one_line_error, read_only, run_unprivileged, untrained_checkpoint,
)


def test_a_negative_eval_memory_is_refused_at_start_up(tmp_path):
    proc = run_cli("ct-train", *SMOKE, "eval.mem_len=-3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                   check=False)
    err = assert_one_line_error(proc, "eval.mem_len=-3", ">= 0")
    assert err.count("null") == 1, err
    assert not (tmp_path / "run").exists()  # refused before Hydra wrote anything


def test_a_device_without_cuda_suggests_the_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = run_cli("ct-train", *SMOKE, "trainer.device=cuda", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                   check=False)
    assert_one_line_error(proc, "trainer.device=cuda", "trainer.device=cpu")


def test_a_misspelt_device_is_refused_before_the_run(tmp_path):
    proc = run_cli("ct-train", *SMOKE, "trainer.device=gpu0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                   check=False)
    assert_one_line_error(proc, "trainer.device='gpu0'", "cpu")
    assert not (tmp_path / "run").exists()


def test_eval_prints_its_result_even_when_the_json_file_cannot_be_written(checkpoint):
    read_only(checkpoint.parent)
    proc = run_unprivileged("ct-eval", str(checkpoint), "split=valid")
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["split"] == "valid" and report["n_tokens"] > 0
    assert_one_line_error(proc, f"could not write {checkpoint.parent / 'eval_valid.json'} (Permission denied)",
                          "the JSON line above is the result")


def test_eval_usage_reads_right():
    usage = run_cli("ct-eval", "--help").stdout.split("\n\n")[0]
    assert "CHECKPOINT" in usage and "[KEY=VALUE ...]" in usage, usage
    proc = run_cli("ct-eval", check=False)
    assert_one_line_error(proc, "CHECKPOINT")
    assert "overrides" not in proc.stderr and "KEY=VALUE" not in proc.stderr.split("error:")[1]


DAMAGED = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "header only": lambda good: good[:100],
    "pickle opcodes": lambda good: b"h\x65xxxxxxxx",  # the unpickler's KeyError(101) once leaked as "(101)"
    "text": lambda good: b"101 102 103\n",
    "safetensors": None,
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_checkpoints_are_one_clear_sentence(checkpoint, tmp_path, kind):
    bad = tmp_path / "bad.pt"
    if kind == "safetensors":
        export_safetensors(checkpoint, tmp_path / "m.safetensors")
        shutil.move(tmp_path / "m.safetensors", bad)
    else:
        bad.write_bytes(DAMAGED[kind](checkpoint.read_bytes()))
    with pytest.raises(CheckpointError) as info:  # every command loads through here
        load_checkpoint(bad)
    err = str(info.value)
    reason = err.split(str(bad), 1)[1]
    assert "\n" not in err and err.count("(") == err.count(")"), err  # nothing cut mid-sentence
    assert not re.search(r"\(\d+\)|miniz|PytorchStreamReader|Weights only load failed|pop from", reason), err
    assert len(err) < 300, err


def test_data_root_pointing_at_a_file_says_so(tmp_path):
    wav = write(tmp_path / "one.wav", tone(220.0, 0.2, 8000), 8000)
    proc = run_cli("ct-prepare", "experiment=audio/demo", "data.corpus=folder", f"data.root={wav}",
                   f"data.cache_dir={tmp_path / 'cache'}", check=False)
    err = assert_one_line_error(proc, "data.root", "is a file")
    assert "not found" not in err


def test_prime_on_a_folder_is_named_a_folder(tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "ck" / "last.pt", AUDIO)
    proc = run_cli("ct-sample", str(ckpt), "--prime", str(tmp_path), "--seconds", "0.01",
                   "--out", str(tmp_path / "a.wav"), check=False)
    err = assert_one_line_error(proc, "--prime", "is a folder")
    assert "not found" not in err


def test_prompt_file_on_a_folder_is_named_a_folder(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello there, some text\n" * 20)
    ckpt = untrained_checkpoint(tmp_path / "ck" / "last.pt", ["experiment=smoke/synthetic", "data=text_file",
                                                              f"data.path={text}"])
    proc = run_cli("ct-sample", str(ckpt), "--prompt-file", str(tmp_path), "--tokens", "2", check=False)
    err = assert_one_line_error(proc, "--prompt-file", "is a folder")
    assert "no such file" not in err


@pytest.mark.parametrize("typo, suggestion", [("experiment=audio/speech_tc", "experiment=audio/speech_ct"),
                                              ("model=tyny", "model=tiny"),
                                              ("experiment=smoke/synthtic", "experiment=smoke/synthetic")])
def test_a_misspelt_recipe_suggests_the_real_one(tmp_path, typo, suggestion):
    proc = run_cli("ct-train", typo, cwd=tmp_path, check=False)
    assert_one_line_error(proc, typo, f"did you mean {suggestion}", "choices:")
