"""Nothing is silently measured or trained on other data: ct-eval refuses a
data override that changes what is measured, a resumed run refuses changed
preprocessing like a changed model size, both in one line naming the
option and both values; options that only say where the data lives are
allowed; and every ct-eval report records the data settings it used."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from ct_core.cli.common import compose_recipe
from ct_core.cli.evaluate import check_same_data
from ct_core.cli.run_setup import check_compatible
from ct_core.data.frontend import build_frontend, changed_data_options
from ct_core.errors import CheckpointError, ConfigError
from tests.conftest import run_cli
from tests.reliability.conftest import AUDIO, SMOKE, assert_one_line_error, untrained_checkpoint, run_files
from tests.text.conftest import english

TEXT = ["experiment=smoke/synthetic", "data=text_file"]

#: (recipe, override, saved value, new value): each changes the data.
CHANGES_THE_DATA = [
    (AUDIO, "sample_rate=16000", "8000", "16000"),
    (AUDIO, "mu=127", "255", "127"),
    (AUDIO, "normalize=rms", "none", "rms"),
    (AUDIO, "trim_silence=true", "false", "true"),
    (AUDIO, "top_db=30", "40.0", "30.0"),
    (AUDIO, "chunk_samples=3840", "null", "3840"),
    (AUDIO, "corpus=folder", "demo", "folder"),
    (AUDIO, "max_files=3", "null", "3"),
    (AUDIO, "valid_fraction=0.2", "0.1", "0.2"),
    (AUDIO, "seed=3", "0", "3"),
    (TEXT, "tokenizer=sentencepiece", "bytes", "sentencepiece"),
    (TEXT, "corpus=enwik8", "file", "enwik8"),
    (TEXT, "valid_fraction=0.2", "0.1", "0.2"),
    (["experiment=smoke/synthetic"], "seed=5", "0", "5"),
    (["experiment=smoke/synthetic"], "kind=periodic", "copy", "periodic"),
    (["experiment=smoke/synthetic"], "n_documents=40", "64", "40"),
]
#: (recipe, override): each only says where the data lives.
LEAVES_THE_DATA = [
    (AUDIO, "root=/elsewhere/audio"),
    (AUDIO, "cache_dir=/elsewhere/cache"),
    (TEXT, "path=/elsewhere/corpus.txt"),
    (TEXT, "cache_dir=/elsewhere/cache"),
    (TEXT, "download=true"),
    (TEXT, "accept_md5_mismatch=true"),
]


def data_section(recipe, *overrides):
    where = ["data.path=/data/corpus.txt"] if recipe is TEXT else []
    return compose_recipe([*recipe, *where, *(f"++data.{o}" for o in overrides)], "test")


def param_id(case):
    return f"{case[0][0].split('=')[1]}:{case[1]}"


@pytest.mark.parametrize("recipe,override,before,after", CHANGES_THE_DATA, ids=map(param_id, CHANGES_THE_DATA))
def test_a_resume_with_data_that_changed_is_refused_naming_both_values(recipe, override, before, after):
    saved, current = data_section(recipe), data_section(recipe, override)
    name = override.split("=")[0]
    with pytest.raises(CheckpointError) as err:
        check_compatible(Path("last.pt"), saved, current)
    assert str(err.value) == (f"last.pt: data.{name} changed {before} → {after} since the checkpoint was written; "
                              f"resume with data.{name}={before} or start a new run")


@pytest.mark.parametrize("recipe,override,before,after", CHANGES_THE_DATA, ids=map(param_id, CHANGES_THE_DATA))
def test_an_eval_override_that_changes_the_data_is_refused(recipe, override, before, after):
    saved, current = data_section(recipe)["data"], data_section(recipe, override)["data"]
    name = override.split("=")[0]
    allowed = {"audio": "data.root, data.cache_dir", "synthetic": "none",
               "text": "data.path, data.root, data.cache_dir, data.download, data.accept_md5_mismatch"}
    with pytest.raises(ConfigError) as err:
        check_same_data(saved, current)
    assert str(err.value) == (f"data.{name} changed {before} → {after}: ct-eval measures on the data the checkpoint "
                              f"was trained on; the data options it may change (where the data lives): "
                              f"{allowed[saved['frontend']]}")


@pytest.mark.parametrize("recipe,override", LEAVES_THE_DATA, ids=map(param_id, LEAVES_THE_DATA))
def test_options_that_say_where_the_data_lives_may_change(recipe, override):
    saved, current = data_section(recipe), data_section(recipe, override)
    assert saved["data"] != current["data"]
    check_compatible(Path("last.pt"), saved, current)
    check_same_data(saved["data"], current["data"])


def test_a_default_written_out_equals_one_left_out():
    written = {"frontend": "audio", "sample_rate": 8000, "mu": 255, "normalize": "none", "top_db": 40}
    assert changed_data_options({"frontend": "audio", "sample_rate": 8000}, written) == []
    assert changed_data_options({"frontend": "audio"}, {"frontend": "text"}) == [("frontend", "audio", "text")]



def test_resume_auto_with_changed_data_is_refused_and_changes_nothing(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    before = run_files(run_dir)
    proc = run_cli("ct-train", *SMOKE, "data.seed=5", f"hydra.run.dir={run_dir}", "resume=auto", cwd=tmp_path,
                   check=False)
    last = run_dir / "checkpoints" / "last.pt"
    assert_one_line_error(proc, f"ct-train: error: {last}: data.seed changed 0 → 5 since the checkpoint was "
                                "written; resume with data.seed=0 or start a new run")
    assert run_files(run_dir) == before


def test_ct_eval_refuses_changed_data_in_one_line_and_writes_nothing(checkpoint):
    proc = run_cli("ct-eval", str(checkpoint), "data.n_documents=40", check=False)
    assert_one_line_error(proc, "ct-eval: error: data.n_documents changed 64 → 40: ct-eval measures on the data "
                                "the checkpoint was trained on; the data options it may change (where the data "
                                "lives): none")
    assert not (checkpoint.parent / "eval_valid.json").exists()


def test_ct_eval_refuses_another_front_end_or_rate_on_an_audio_checkpoint(tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "ck" / "last.pt", AUDIO)
    proc = run_cli("ct-eval", str(ckpt), "data.frontend=text", check=False)
    assert_one_line_error(proc, "ct-eval: error: data.frontend=text: this model was trained on data.frontend=audio "
                          "and reads only that kind of data; evaluate a text checkpoint instead")
    proc = run_cli("ct-eval", str(ckpt), "data.sample_rate=16000", check=False)
    assert_one_line_error(proc, "ct-eval: error: data.sample_rate changed 8000 → 16000:")


def test_every_report_records_the_data_it_was_measured_with(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(english(1500, seed=1))
    ckpt = untrained_checkpoint(tmp_path / "ck" / "last.pt", [*TEXT, f"data.path={corpus}"])
    report = json.loads(run_cli("ct-eval", str(ckpt)).stdout.splitlines()[-1])
    resolved = build_frontend(compose_recipe([*TEXT, f"data.path={corpus}"], "test")["data"]).cfg
    assert report["data"] == {"frontend": "text", **dataclasses.asdict(resolved)}
    # The corpus moved to another folder, prepared into another cache: allowed, and recorded.
    moved = tmp_path / "elsewhere" / "corpus.txt"
    moved.parent.mkdir()
    shutil.copyfile(corpus, moved)
    cache = tmp_path / "other_cache"
    proc = run_cli("ct-eval", str(ckpt), f"data.path={moved}", f"data.cache_dir={cache}")
    moved_report = json.loads(proc.stdout.splitlines()[-1])
    assert moved_report["data"] == {**report["data"], "path": str(moved), "cache_dir": str(cache)}
    assert moved_report["nll"] == report["nll"] and any(cache.iterdir())
    assert json.loads((ckpt.parent / "eval_valid.json").read_text())["data"] == moved_report["data"]
