"""Cases a new user met that ended in a traceback or in a message naming
the wrong thing: each is now one line naming the right option or file
(exit 2), or simply works."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest

from ct_core.errors import CheckpointError
from ct_core.train.model_loading import build_model, build_run, read_model_file
from tests.audio.conftest import tone, write
from tests.conftest import run_cli, script
from tests.reliability.conftest import (
    AUDIO, SMOKE, assert_one_line_error, read_only, run_unprivileged, untrained_checkpoint,
)
from tests.text.conftest import english

TEXT = ["experiment=smoke/synthetic", "data=text_file"]
AUDIO_EXTENSIONS = ".aif, .aifc, .aiff, .au, .caf, .flac, .mp3, .oga, .ogg, .opus, .rf64, .snd, .w64, .wav, .wv"


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe_text")
    corpus = root / "corpus.txt"
    corpus.write_text(english(800, seed=3))
    return untrained_checkpoint(root / "run" / "checkpoints" / "last.pt", [*TEXT, f"data.path={corpus}"])


@pytest.fixture(scope="module")
def audio_checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("probe_audio") / "run" / "checkpoints" / "last.pt", AUDIO)


def speech_folder(root: Path, n: int) -> Path:
    for i in range(n):
        write(root / f"u{i}.wav", tone(200.0 + 40 * i, 0.3, 8000, seed=i), 8000)
    return root


# --------------------------------------------------------------- recipes
def test_malformed_yaml_in_a_user_recipe_names_file_and_line(tmp_path):
    recipe = tmp_path / "my_config" / "local" / "default.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text("# @package _global_\ntrainer:\n  device: cpu\n   steps: [1\n")
    proc = run_cli("ct-train", "--config-dir", str(tmp_path / "my_config"), *SMOKE,
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    err = assert_one_line_error(proc)
    assert err == (f"ct-train: error: {recipe} line 4: mapping values are not allowed here (not valid YAML); "
                   "fix that line of the recipe")
    assert not (tmp_path / "run").exists()


def test_a_missing_config_dir_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("ct-train", "--config-dir", "nowhere", *SMOKE, f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, check=False)
    err = assert_one_line_error(proc)
    assert err == ("ct-train: error: --config-dir nowhere: no such folder; give the folder that holds your recipes "
                   "(e.g. my_config with my_config/local/default.yaml)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["/tmp/données", "/tmp/a(b)"])
def test_an_unquoted_value_hydra_cannot_lex_says_how_to_quote_it(tmp_path, value):
    proc = run_cli("ct-prepare", "data=folder", f"data.root={value}", cwd=tmp_path, check=False)
    err = assert_one_line_error(proc)
    assert err == (f"ct-prepare: error: data.root={value}: Hydra reads a value with non-ASCII letters, parentheses "
                   f"or brackets only when it is quoted; put Hydra's quotes inside the shell's: \"data.root='{value}'\"")


def test_the_quoted_form_the_message_suggests_works(tmp_path):
    root = speech_folder(tmp_path / "données", 4)
    proc = run_cli("ct-prepare", "experiment=audio/demo", "data=folder", f"data.root='{root}'",
                   "data.sample_rate=8000", f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert " train: 2 documents" in proc.stdout


def test_a_failed_run_leaves_no_run_folder(tmp_path):
    # Fails after Hydra set up the run folder (the corpus is read then).
    for run_dir in ([], [f"hydra.run.dir={tmp_path / 'a' / 'b' / 'run'}"]):
        proc = run_cli("ct-train", "experiment=audio/demo", "data=folder", f"data.root={tmp_path / 'absent'}",
                       *run_dir, cwd=tmp_path, check=False)
        assert_one_line_error(proc, "data.root=", "no such folder")
        assert sorted(os.listdir(tmp_path)) == []  # neither outputs/ nor a/


def test_prepare_says_where_the_prepared_data_is(tmp_path):
    proc = run_cli("ct-prepare", "experiment=audio/demo", f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"prepared data: {tmp_path / 'cache' / 'audio'}/"), last
    assert (Path(last.removeprefix("prepared data: ")) / "manifest.json").is_file()
    proc = run_cli("ct-prepare", "experiment=smoke/synthetic", cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == "prepared data: none on disk (made in memory)"


# ----------------------------------------------------------- data splits
def test_a_one_file_folder_says_it_is_too_few_to_split(tmp_path):
    root = speech_folder(tmp_path / "one", 1)
    expected = (f"data.root={root}: 1 audio file cannot be split: data.valid_fraction=0.05 gives valid 1, "
                "data.test_fraction=0.05 gives test 1, and train keeps the rest, at least 1 (3 files in all); add files")
    common = ["experiment=audio/demo", "model=tiny", "memory=ct_small", "data=folder", f"data.root={root}",
              "data.sample_rate=8000", f"data.cache_dir={tmp_path / 'cache'}"]
    err = assert_one_line_error(run_cli("ct-prepare", *common, cwd=tmp_path, check=False))
    assert err == f"ct-prepare: error: {expected}"
    err = assert_one_line_error(run_cli("ct-train", *common, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                                        check=False))
    assert err == f"ct-train: error: {expected}"


def test_a_two_file_folder_names_the_option_that_frees_a_file(tmp_path):
    root = speech_folder(tmp_path / "two", 2)
    proc = run_cli("ct-prepare", "experiment=audio/demo", "data=folder", f"data.root={root}", "data.sample_rate=8000",
                   f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path, check=False)
    err = assert_one_line_error(proc)
    assert err.endswith("(3 files in all); add files, or set data.test_fraction=0 to leave test empty"), err
    proc = run_cli("ct-prepare", "experiment=audio/demo", "data=folder", f"data.root={root}", "data.sample_rate=8000",
                   "data.test_fraction=0", f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert " valid: 1 documents" in proc.stdout


def test_a_folder_without_audio_reads_right(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    proc = run_cli("ct-prepare", "data=folder", f"data.root={tmp_path / 'texts'}", cwd=tmp_path, check=False)
    err = assert_one_line_error(proc)
    assert err == (f"ct-prepare: error: data.root={tmp_path / 'texts'}: no audio files found (looked for "
                   f"{AUDIO_EXTENSIONS}); point data.root at the folder that holds them")


# ------------------------------------------------------------- ct-eval
def test_weights_that_do_not_fit_name_the_option_and_both_values(audio_checkpoint):
    """ct-eval refuses the data change before it loads any weights
    (test_measured_data.py has every kind); a model built from a recipe that
    differs still names the option and both values, never torch's message."""
    proc = run_cli("ct-eval", str(audio_checkpoint), "data.mu=127", check=False)
    assert assert_one_line_error(proc).startswith("ct-eval: error: data.mu changed 255 → 127: ")
    payload = read_model_file(audio_checkpoint)
    raw = copy.deepcopy(payload["config"])
    raw["data"]["mu"] = 127
    cfg, _ = build_run(raw, payload["frontend"])
    with pytest.raises(CheckpointError) as err:
        build_model(audio_checkpoint, payload, cfg)
    assert str(err.value) == (f"{audio_checkpoint}: data.mu differs: checkpoint 255, recipe 127 (a vocabulary "
                              "of 256 vs 128 tokens); use the checkpoint's value (or its recipe) for this model")


def test_resuming_with_another_model_size_names_the_option(tmp_path, smoke_run):
    proc = run_cli("ct-train", *SMOKE, "trainer.steps=14", "data.vocab_size=40",
                   f"resume={smoke_run / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, check=False)
    err = assert_one_line_error(proc)
    assert err == (f"ct-train: error: {smoke_run / 'checkpoints' / 'last.pt'}: data.vocab_size changed 32 → 40 since "
                   "the checkpoint was written; resume with data.vocab_size=32 or start a new run")


def test_eval_of_an_audio_model_on_text_names_the_frontend(audio_checkpoint):
    proc = run_cli("ct-eval", str(audio_checkpoint), "data.frontend=text", check=False)
    err = assert_one_line_error(proc)
    assert err == ("ct-eval: error: data.frontend=text: this model was trained on data.frontend=audio and reads "
                   "only that kind of data; evaluate a text checkpoint instead")


def test_attention_report_may_come_before_the_overrides(checkpoint):
    proc = run_cli("ct-eval", str(checkpoint), "--attention-report", "split=test", "eval.batch_size=2")
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["split"] == "test" and Path(report["attention_report"]["json"]).name == "attention_test.json"


# ----------------------------------------------------------- ct-sample
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_sample_seed_has_the_bounds_of_trainer_seed(checkpoint, tmp_path, seed):
    proc = run_cli("ct-sample", str(checkpoint), "--seed", seed, "--tokens", "2", "--out", str(tmp_path / "s.txt"),
                   check=False)
    err = assert_one_line_error(proc)
    assert err == f"ct-sample: error: --seed {seed}: must be an integer in [0, 2^32)"
    assert not (tmp_path / "s.txt").exists()


def test_front_end_options_may_come_before_the_checkpoint(audio_checkpoint, tmp_path):
    out = tmp_path / "a.wav"
    run_cli("ct-sample", "--seconds", "0.01", str(audio_checkpoint), "--out", str(out))
    assert out.is_file() and out.with_suffix(".png").is_file()
    proc = run_cli("ct-sample", "--seconds", "0.01", str(tmp_path / "typo.pt"), check=False)
    assert_one_line_error(proc, f"{tmp_path / 'typo.pt'}: no such checkpoint")


def test_out_on_a_device_is_refused(checkpoint):
    proc = run_cli("ct-sample", str(checkpoint), "--tokens", "2", "--out", os.devnull, check=False)
    err = assert_one_line_error(proc)
    assert err == (f"ct-sample: error: --out {os.devnull} is not a regular file or folder (a device or pipe); "
                   "name a file or folder to write the samples to")
    assert not Path(os.devnull + ".txt").exists()


def test_an_unwritable_default_place_is_not_reported_as_out(checkpoint):
    read_only(checkpoint.parent.parent)  # the run folder, where samples/ would be made
    proc = run_unprivileged("ct-sample", str(checkpoint), "--tokens", "2")
    err = assert_one_line_error(proc)
    assert err.startswith(f"ct-sample: error: no --out given, and the default place {checkpoint.parent.parent / 'samples'} "
                          "cannot take the sample ("), err
    assert err.endswith("; give --out FILE") and "--out=" not in err, err


# ------------------------------------------------------- an ASCII locale
LOCALES = {"C": {"LC_ALL": "C", "LANG": "C"}, "C, UTF-8 mode off": {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}}


def run_in_locale(locale: dict[str, str], name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``name`` with its arguments passed as the bytes a UTF-8 terminal sends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8", "PYTHONIOENCODING"))}
    env.update(locale, PYTHONUNBUFFERED="1")
    argv = [os.fsencode(a) for a in script(name)] + [a.encode("utf-8") for a in args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=600)


@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_non_ascii_prompts_files_and_names_work_in_an_ascii_locale(text_checkpoint, audio_checkpoint, tmp_path, locale):
    env = LOCALES[locale]
    folder = tmp_path / "données"
    folder.mkdir()
    prompt_file = folder / "invite é.txt"
    prompt_file.write_text("Ünïcödé prompt\n", encoding="utf-8")
    cases = [
        ("ct-sample", str(text_checkpoint), "--prompt", "Café ☕", "--tokens", "3", "--temperature", "0",
         "--out", str(folder / "café.txt")),
        ("ct-sample", str(text_checkpoint), "--prompt-file", str(prompt_file), "--tokens", "3",
         "--out", str(folder / "sortie.txt")),
        ("ct-sample", str(audio_checkpoint), "--seconds", "0.02", "--out", str(folder / "été.wav")),
    ]
    for args in cases:
        proc = run_in_locale(env, *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
        assert b"Traceback" not in proc.stderr
    assert (folder / "café.txt").read_bytes().startswith("Café ☕".encode())
    assert (folder / "sortie.txt").read_bytes().startswith("Ünïcödé prompt\n".encode())
    assert (folder / "été.wav").stat().st_size > 44 and (folder / "été.png").is_file()
    assert "Café ☕".encode() in run_in_locale(env, *cases[0], "--force", cwd=tmp_path).stdout  # streamed as typed


def test_non_ascii_overrides_without_utf8_mode_fail_in_one_line(tmp_path):
    proc = run_in_locale(LOCALES["C, UTF-8 mode off"], "ct-train", *SMOKE, "hydra.run.dir='runs/été'", cwd=tmp_path)
    err = proc.stderr.decode("utf-8").strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert err == ("ct-train: error: hydra.run.dir='runs/été': non-ASCII text needs a UTF-8 locale, and this one is "
                   "ASCII; run again with PYTHONUTF8=1 (or LC_ALL=C.UTF-8)")
    assert os.listdir(tmp_path) == []
