"""A trained model back from a file: a ``ct-train`` checkpoint or a
``ct-export`` safetensors file, rebuilt from the recipe and front-end state
it carries.

When the weights do not fit the model a recipe describes, the error names
the recipe option that differs and both values, found by comparing the
model configurations the two recipes build (``model.d_model differs:
checkpoint 64, recipe 128``), not by reading PyTorch's message.

Example::

    from ct_core import load_model
    model = load_model("runs/demo/checkpoints/last.pt")       # or demo.safetensors
    payload = read_model_file(Path("demo.safetensors"))       # config, model, frontend, step
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from ct_core.data.frontend import FrontEnd, build_frontend
from ct_core.errors import CheckpointError, ConfigError, UserError
from ct_core.model.config import recipe_key
from ct_core.model.lm import CompressiveTransformerLM
from ct_core.train.run_config import RunConfig


def build_run(raw: Mapping[str, Any], frontend_state: Mapping[str, Any] | None = None) -> tuple[RunConfig, FrontEnd]:
    """Validate the recipe and build its front end (no data is read: the
    front end knows its vocabulary size from its options or ``frontend_state``)."""
    data = raw.get("data")
    if not isinstance(data, dict):
        raise ConfigError("data is missing: pick a data recipe, e.g. data=audio_demo")
    frontend = build_frontend(data, state=frontend_state)
    return RunConfig.from_dict(raw, vocab_size=frontend.vocab_size), frontend


def read_model_file(path: Path) -> dict[str, Any]:
    """The payload of a checkpoint (``torch.load(weights_only=True)``) or of
    an export (:func:`~ct_core.train.export_format.read_export`), told apart
    by their content; every failure is one line naming ``path``."""
    from ct_core.train.checkpoint import load_checkpoint
    from ct_core.train.checkpoint_diagnosis import is_safetensors
    from ct_core.train.export_format import read_export

    path = Path(path)
    if path.is_file() and is_safetensors(path):
        return read_export(path)
    return load_checkpoint(path)


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def describe_mismatch(saved: Mapping[str, Any], saved_frontend: Mapping[str, Any], cfg: RunConfig) -> str | None:
    """The first recipe option whose value makes the saved model (recipe
    ``saved`` and front-end state ``saved_frontend``) differ from ``cfg``'s,
    as ``option differs: checkpoint A, recipe B``; None when both recipes
    describe the same model."""
    try:
        saved_cfg, _ = build_run(saved, saved_frontend)
    except UserError:
        return None  # a recipe this version cannot build; the caller says what does not fit
    a, b = dataclasses.asdict(saved_cfg.model), dataclasses.asdict(cfg.model)
    for name in a:
        if a[name] == b[name]:
            continue
        if name != "vocab_size":
            return f"{recipe_key(name)} differs: checkpoint {_fmt(a[name])}, recipe {_fmt(b[name])}"
        # The vocabulary comes from the data options: name the one that changed it.
        old, new = saved.get("data") or {}, cfg.data
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return (f"data.{key} differs: checkpoint {_fmt(old.get(key))}, recipe {_fmt(new.get(key))} "
                        f"(a vocabulary of {a[name]} vs {b[name]} tokens)")
        return f"the vocabulary differs: checkpoint {a[name]} tokens, recipe {b[name]}"
    return None


def _first_unfit_tensor(model: CompressiveTransformerLM, weights: Mapping[str, Any]) -> str:
    """Which tensor of ``weights`` does not fit ``model``, from the two
    state dicts."""
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in weights:
            return f"the file has no {name}"
        shape = tuple(getattr(weights[name], "shape", ()))
        if shape != tuple(tensor.shape):
            return f"{name} is {list(shape)} in the file but {list(tensor.shape)} in the model"
    extra = sorted(set(weights) - set(own))
    return f"the file has {extra[0]}, which the model lacks" if extra else "the tensors differ"


def mismatch_error(path: Path, payload: Mapping[str, Any], cfg: RunConfig,
                   model: CompressiveTransformerLM) -> CheckpointError:
    """The one-line error for weights in ``payload`` that do not fit ``model``
    (built from ``cfg``)."""
    option = describe_mismatch(payload["config"], payload.get("frontend") or {}, cfg)
    if option is not None:
        return CheckpointError(f"{path}: {option}; use the checkpoint's value (or its recipe) for this model")
    return CheckpointError(f"{path}: the weights do not match the model its recipe describes "
                           f"({_first_unfit_tensor(model, payload['model'])}); the file's recipe and weights "
                           "disagree, use another checkpoint")


def build_model(path: Path, payload: Mapping[str, Any], cfg: RunConfig) -> CompressiveTransformerLM:
    """The model of ``cfg`` holding the weights of ``payload`` (read from
    ``path``), in eval mode on the CPU."""
    model = CompressiveTransformerLM(cfg.model)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError:
        raise mismatch_error(path, payload, cfg, model) from None
    return model.eval()


def load_model(path: str | Path, device: str = "cpu") -> CompressiveTransformerLM:
    """The trained model of a checkpoint or an export, in eval mode on
    ``device``. Its recipe is ``read_model_file(path)["config"]``."""
    path = Path(path)
    payload = read_model_file(path)
    cfg, _ = build_run(payload["config"], payload["frontend"])
    return build_model(path, payload, cfg).to(device)
