"""Turn a resolved recipe into a front end and a validated run config, and
check that a checkpoint fits it. Shared by ct-train, ct-eval and ct-sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ct_core.errors import CheckpointError, DataError
from ct_core.data.frontend import FrontEnd, changed_data_options, option_value
from ct_core.train.model_loading import build_run

__all__ = ["MODEL_SECTIONS", "build_run", "check_compatible", "require_split"]

#: Sections whose values decide the model's shape; a checkpoint must agree.
MODEL_SECTIONS = ("model", "memory", "compression")


def check_compatible(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """A one-line error naming the first model option where the checkpoint's
    config differs from the run's, then the first data option that changes
    the data (any but the front end's ``same_data_fields``)."""
    for section in MODEL_SECTIONS:
        a, b = saved.get(section) or {}, current.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                raise CheckpointError(
                    f"{path}: checkpoint has {section}.{key}={a.get(key)!r} but this run has "
                    f"{section}.{key}={b.get(key)!r}; resume with the checkpoint's recipe or start a new run"
                )
    changes = changed_data_options(saved.get("data") or {}, current.get("data") or {})
    if changes:
        name, before, after = changes[0]
        raise CheckpointError(
            f"{path}: data.{name} changed {option_value(before)} → {option_value(after)} since the checkpoint "
            f"was written; resume with data.{name}={option_value(before)} or start a new run"
        )


def require_split(frontend: FrontEnd, split: str, alternative: str) -> Sequence[Any]:
    """The documents of ``split``, or a one-line error when none has a token
    to predict (an evaluation would divide by zero). The fix names the data
    option that sizes the split where the front end has one
    (``data.valid_fraction``); ``alternative`` is what else the user can do."""
    docs = frontend.documents(split)
    if any(len(doc) > 1 for doc in docs):
        return docs
    option = f"{split}_fraction"
    if hasattr(frontend.cfg, option):
        fix = f"give it data with data.{option} > 0 (now {getattr(frontend.cfg, option)})"
    else:
        fix = "give the corpus documents for it"
    raise DataError(f"split {split!r} is empty ({len(docs)} documents, no token to predict); {alternative}{fix}")
