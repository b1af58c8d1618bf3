"""The run directory of ``ct-train``: found, checked and claimed before
Hydra writes into it.

Hydra writes ``.hydra/`` into the run directory before the training
function runs, so every check that protects an earlier run happens first,
in :func:`claim_run_dir`:

1. the directory can be created and written (one line naming
   ``hydra.run.dir`` otherwise);
2. no live process trains there (:mod:`ct_core.train.run_lock`);
3. if it already holds a run (a checkpoint, or logged metrics) and the new
   run neither resumes (``resume=auto`` or a path) nor sets
   ``trainer.overwrite=true``, one line says so and nothing is touched;
   with ``trainer.overwrite=true`` the earlier run's checkpoints, metrics
   and TensorBoard events are deleted first, so the two never mix.

Only rank 0 of a ``torchrun`` job claims the directory.

Example::

    run_dir = planned_run_dir(overrides, config_dir=None)
    claim_run_dir(run_dir, resume=None, overwrite=False)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from ct_core.cli.output_paths import check_writable_dir
from ct_core.errors import ConfigError
from ct_core.train.run_lock import hold_run_dir

RUN_DIR_KEY = "hydra.run.dir"
#: What an earlier run leaves that a new one would replace or mix with.
RUN_STATE = ("checkpoints", "metrics.jsonl", "tb")


def given_run_dir(overrides: Sequence[str]) -> str | None:
    """The ``hydra.run.dir=`` of the command line, if any (the last wins)."""
    found = None
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+") == RUN_DIR_KEY:
            found = value.strip("'\"")
    return found


def planned_run_dir(overrides: Sequence[str], config_dir: str | None) -> Path:
    """Where this run will write: ``hydra.run.dir`` if given, else the
    recipe's default (``outputs/<experiment>/<time>``), resolved now."""
    given = given_run_dir(overrides)
    if given is not None:
        if not given:
            raise ConfigError(f"{RUN_DIR_KEY}= is empty; give a folder, e.g. {RUN_DIR_KEY}=runs/my_run")
        return Path(given)
    from hydra import compose, initialize_config_dir

    from ct_core.cli.common import recipes_dir, search_path_override

    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    plain += search_path_override(config_dir)
    with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3", job_name="ct-train"):
        cfg = compose(config_name="config", overrides=plain, return_hydra_config=True)
    return Path(str(cfg.hydra.run.dir))


def holds_run(run_dir: Path) -> bool:
    """Whether an earlier run left a checkpoint or logged metrics here."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(p.suffix == ".pt" for p in checkpoints.iterdir()):
        return True
    metrics = run_dir / "metrics.jsonl"
    return metrics.is_file() and metrics.stat().st_size > 0


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def claim_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Checks 1-3 of the module docstring; idempotent within a process."""
    check_writable_dir(run_dir, RUN_DIR_KEY)
    if not is_main_process():
        return
    try:
        hold_run_dir(run_dir)
    except OSError as err:
        raise ConfigError(f"{RUN_DIR_KEY}={run_dir}: cannot create it ({err.strerror}); "
                          "choose a writable location") from None
    if resume is not None or not holds_run(run_dir):
        return
    if not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with resume=auto, train in a new "
            f"{RUN_DIR_KEY}=..., or replace it with trainer.overwrite=true"
        )
    for name in RUN_STATE:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
