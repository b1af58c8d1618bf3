"""Every option of a run, given a value of the wrong type or out of range,
is refused in one line that names the option as the user typed it.

The options are enumerated from the configuration dataclasses (the model's,
the optimizer's, the trainer's, evaluation's and each front end's data
options), so a new option is probed as soon as it exists: a probe that is
accepted fails here until the option is validated or classified below.
Values are parsed by Hydra's own override parser, exactly as on the command
line; a few cases also go through the real ct-train (exit 2, one line, no
run directory written)."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from ct_core.cli.common import compose_recipe, recipes_dir
from ct_core.cli.run_setup import build_run
from ct_core.data.frontend import frontend_class
from ct_core.errors import ConfigError
from ct_core.model.config import ModelConfig, recipe_key
from ct_core.train.run_config import EvalConfig, OptimConfig, TrainerConfig
from tests.conftest import run_cli
from tests.reliability.conftest import assert_one_line_error

#: One recipe per front end, so that each front end's data options are probed.
RECIPES = {
    "synthetic": ["experiment=smoke/synthetic"],
    "audio": ["experiment=audio/demo"],
    "text": ["experiment=smoke/synthetic", "data=text_file", "data.path=corpus.txt"],
}
#: Paths: any string is valid until the file is read (a missing one is its own one-line error).
FREE_FORM = {"data.root", "data.path", "data.cache_dir"}
#: Options whose out-of-range value is not -1: levels in dBFS are at most 0.
OUT_OF_RANGE = {"data.peak_db": "1.0", "data.rms_db": "1.0", "data.silence_db": "1.0"}


def options() -> list[tuple[str, str, typing.Any]]:
    """``(recipe, key as typed, annotation)`` of every option."""
    found = [("synthetic", recipe_key(f.name), typing.get_type_hints(ModelConfig)[f.name])
             for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]  # vocab_size: the front end's
    for section, cls in (("optim", OptimConfig), ("trainer", TrainerConfig), ("eval", EvalConfig)):
        found += [("synthetic", f"{section}.{f.name}", typing.get_type_hints(cls)[f.name])
                  for f in dataclasses.fields(cls)]
    for frontend in sorted(RECIPES):
        cls = frontend_class(frontend).Config
        found += [(frontend, f"data.{f.name}", typing.get_type_hints(cls)[f.name]) for f in dataclasses.fields(cls)]
    return found


def probes(key: str, annotation) -> list[str]:
    """Values of the wrong type, then out of range, for one option."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in args if a is not type(None)]
    out_of_range = OUT_OF_RANGE.get(key)
    if annotation is int:
        return ["abc", "1.5", out_of_range or "-1"]
    if annotation is float:
        return ["abc", "nan", out_of_range or "-1.0"]
    if annotation is bool:
        return ["abc", "2"]
    if annotation is str:
        return ["3"] + ([] if key in FREE_FORM else ["bogus"])
    return ["abc", "[1.5,0.9]"]  # a pair of numbers (optim.betas)


CASES = [(recipe, key, value) for recipe, key, annotation in options() for value in probes(key, annotation)]
_PARSER = OverridesParser.create()
_RAW: dict[str, dict] = {}


def recipe_with(recipe: str, *overrides: str) -> dict:
    """The composed recipe with ``overrides``: recipe choices (``compression=none``)
    composed by Hydra, values parsed as Hydra parses them and set in place
    (one composition per recipe keeps the hundreds of cases fast)."""
    choices = [o for o in overrides if (recipes_dir() / o.partition("=")[0]).is_dir()]
    key = " ".join([recipe, *choices])
    if key not in _RAW:
        _RAW[key] = compose_recipe(RECIPES[recipe] + choices, "test")
    raw = copy.deepcopy(_RAW[key])
    for override in _PARSER.parse_overrides([o for o in overrides if o not in choices]):
        section, _, name = override.key_or_group.rpartition(".")
        (raw[section] if section else raw)[name] = override.value()
    return raw


def assert_refused(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_run(raw)
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message, message


@pytest.mark.parametrize("recipe, key, value", CASES, ids=[f"{r}:{k}={v}" for r, k, v in CASES])
def test_every_option_refuses_a_wrong_value_naming_it(recipe, key, value):
    assert_refused(recipe_with(recipe, f"{key}={value}"), key)


def test_every_option_is_probed():
    keys = {key for _, key, _ in CASES}
    assert {"trainer.steps", "memory.mem_len", "compression.compression", "optim.betas", "eval.mem_len",
            "trainer.overwrite", "data.n_documents", "data.sample_rate", "data.vocab_size"} <= keys
    assert len(keys) > 70


RELATIONS = [
    ("synthetic", ["model.d_model=30", "model.n_heads=4"], "model.d_model"),
    ("synthetic", ["memory.seq_len=30"], "memory.seq_len"),  # not a multiple of compression_rate=4
    ("synthetic", ["compression=mean_pool", "compression.compression_loss=attention"], "compression.compression_loss"),
    ("synthetic", ["optim.lr=0.01", "optim.min_lr=0.1"], "optim.min_lr"),
    ("synthetic", ["trainer.batch_size=6", "trainer.grad_accum=4"], "trainer.batch_size"),
    ("synthetic", ["memory.cmem_len=0", "eval.cmem_len=8"], "eval.cmem_len"),
    ("synthetic", ["data.min_len=100", "data.max_len=50"], "data.max_len"),
    ("audio", ["data.valid_fraction=0.6", "data.test_fraction=0.5"], "data.valid_fraction"),
    ("text", ["data.valid_fraction=0.6", "data.test_fraction=0.5"], "data.valid_fraction"),
    ("synthetic", ["resume=3"], "resume"),
]


@pytest.mark.parametrize("recipe, overrides, key", RELATIONS, ids=[" ".join(o) for _, o, _ in RELATIONS])
def test_invalid_combinations_are_refused(recipe, overrides, key):
    assert_refused(recipe_with(recipe, *overrides), key)


@pytest.mark.parametrize("overrides, expected", [
    # a convolution left at its initialisation: valid
    (["compression=none", "memory.cmem_len=16"], {"compression": "conv", "compression_loss": "none", "cmem_len": 16}),
    (["compression=most_used", "compression.compression_loss=none"],
     {"compression": "most_used", "compression_loss": "none"}),
    (["memory.mem_len=0"], {"mem_len": 0}),  # evicted states go straight to compression
    (["memory.mem_len=0", "memory.cmem_len=0"], {"mem_len": 0, "cmem_len": 0}),  # a vanilla transformer
])
def test_odd_but_valid_combinations_are_accepted(overrides, expected):
    cfg, _ = build_run(recipe_with("synthetic", *overrides))
    assert {key: getattr(cfg.model, key) for key in expected} == expected


@pytest.mark.parametrize("override", ["trainer.steps=abc", "memory.mem_len=1.5", "trainer.seed=-1",
                                      "model.d_model=31"])
def test_ct_train_refuses_in_one_line_before_writing_anything(tmp_path, override):
    proc = run_cli("ct-train", "experiment=smoke/synthetic", override, f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, check=False)
    assert_one_line_error(proc, override.partition("=")[0])
    assert not (tmp_path / "run").exists()
