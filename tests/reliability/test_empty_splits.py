"""A split with nothing to predict is an error naming the split and the fix,
in ct-eval, ct-train and ct-prepare; no JSON this package prints holds NaN
or infinity."""

from __future__ import annotations

import json

import pytest

from ct_audio.config import AudioConfig
from ct_audio.corpora import list_corpus
from ct_audio.splits import assign_splits
from tests.audio.conftest import tone, write
from tests.conftest import run_cli
from tests.reliability.conftest import SMOKE, assert_one_line_error, untrained_checkpoint
from tests.text.conftest import english

TEXT = ["experiment=smoke/synthetic", "data=text_file"]


def strict_json(line: str):
    """``json.loads`` that refuses NaN and infinity (which JSON does not have)."""
    def refuse(name):
        raise AssertionError(f"{name} in JSON output: {line}")
    return json.loads(line, parse_constant=refuse)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(english(1500, seed=1))
    return path


def test_eval_of_an_empty_split_names_it_and_the_fix(tmp_path, text_file):
    ckpt = untrained_checkpoint(tmp_path / "ck" / "last.pt", [*TEXT, f"data.path={text_file}"])
    proc = run_cli("ct-eval", str(ckpt), "split=test", check=False)
    assert_one_line_error(proc, "split 'test'", "data.test_fraction")
    assert not (ckpt.parent / "eval_test.json").exists()
    valid = run_cli("ct-eval", str(ckpt), "split=valid")
    assert strict_json(valid.stdout.splitlines()[-1])["n_tokens"] > 0


def test_eval_json_has_no_infinity(tmp_path):
    # Huge logits: a perplexity beyond floating point.
    ckpt = untrained_checkpoint(tmp_path / "ck" / "last.pt", ["experiment=smoke/synthetic"], scale=1e6)
    proc = run_cli("ct-eval", str(ckpt), "split=valid", "eval.batch_size=4")
    report = strict_json(proc.stdout.splitlines()[-1])
    assert report["nll"] > 700 and report["ppl"] is None
    assert strict_json((ckpt.parent / "eval_valid.json").read_text()) == report


def test_train_refuses_an_empty_validation_split_before_training(tmp_path, text_file):
    run_dir = tmp_path / "run"
    proc = run_cli("ct-train", *SMOKE, "data=text_file", f"data.path={text_file}", "data.valid_fraction=0",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "split 'valid'", "data.valid_fraction")
    assert not (run_dir / "checkpoints").exists()


def test_prepare_fails_when_no_usable_file_lands_in_train(tmp_path):
    root = tmp_path / "speech"
    for i, name in enumerate(("a", "b", "c")):
        write(root / f"{name}.wav", tone(200.0 + 50 * i, 0.2, 8000, seed=i), 8000)
    cfg = AudioConfig(corpus="folder", root=str(root), sample_rate=8000)
    splits, _ = assign_splits(list_corpus("folder", root).utterances, cfg.valid_fraction, cfg.test_fraction, 0)
    good = splits["test"][0].path
    for utt in splits["train"] + splits["valid"]:
        utt.path.write_bytes(b"not audio at all")
    proc = run_cli("ct-prepare", "experiment=audio/demo", "data.corpus=folder", f"data.root={root}",
                   f"data.cache_dir={tmp_path / 'cache'}", check=False)
    err = assert_one_line_error(proc, "train", good.name, splits["train"][0].path.name, "unreadable")
    assert err.index("train") < err.index(good.name)
    assert not list((tmp_path / "cache" / "audio").glob("*/manifest.json"))


def test_prepare_fails_when_the_train_file_of_a_folder_is_empty(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("")  # the only training file
    (folder / "b.txt").write_text(english(200, seed=2))
    proc = run_cli("ct-prepare", *TEXT, f"data.path={folder}", f"data.cache_dir={tmp_path / 'cache'}",
                   check=False)
    assert_one_line_error(proc, "train", "a.txt", "empty", "valid: b.txt")
