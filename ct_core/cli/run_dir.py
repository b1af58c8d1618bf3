"""The run directory of ``ct-train``: found, checked and claimed before
Hydra writes into it.

Hydra writes ``.hydra/`` into the run directory before the training
function runs, so every check that protects an earlier run happens first,
in :func:`claim_run_dir`:

1. the directory can be created and written (one line naming
   ``hydra.run.dir`` otherwise);
2. no live process trains there (:mod:`ct_core.train.run_lock`);
3. the checkpoint to resume (``resume=auto``: the directory's newest;
   ``resume=PATH``) is loadable and fits the recipe: the same model
   options and the same data, up to options that leave the data unchanged
   (:func:`~ct_core.cli.run_setup.check_compatible`);
4. the directory holds one lineage (:mod:`ct_core.train.run_lineage`): if
   it already holds a run (a checkpoint, or logged metrics) and the new
   run neither continues it (``resume=auto``, or a checkpoint of this run)
   nor sets ``trainer.overwrite=true``, one line says so and nothing is
   touched; with ``trainer.overwrite=true`` the earlier run's checkpoints,
   metrics, TensorBoard events and ``run.json`` are deleted first, so the
   two never mix;
5. the run id is recorded in ``run.json``.

Only rank 0 of a ``torchrun`` job claims the directory.

Example::

    run_dir = planned_run_dir(overrides, config_dir=None)
    claim = claim_run_dir(run_dir, run_cfg)    # claim.run_id, claim.source
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ct_core.cli.output_paths import check_writable_dir
from ct_core.errors import ConfigError
from ct_core.train.run_config import RunConfig
from ct_core.train.run_lineage import (RUN_FILE, foreign_checkpoint_error, lies_in, run_id_to_train_under,
                                       same_run)
from ct_core.train.run_lock import hold_run_dir

RUN_DIR_KEY = "hydra.run.dir"
#: What an earlier run leaves that a new one would replace or mix with.
RUN_STATE = ("checkpoints", "metrics.jsonl", "tb", RUN_FILE)


@dataclass(frozen=True)
class RunClaim:
    """What :func:`claim_run_dir` decided: the run id this process trains
    under (None on ranks other than 0, which do not save) and the
    checkpoint to resume (None: start fresh)."""

    run_id: str | None
    source: Path | None


#: Claims this process made, by resolved run directory (ct-train claims
#: before Hydra starts and again inside the run).
_CLAIMED: dict[Path, RunClaim] = {}


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


def resume_source(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint ``resume`` names: ``auto`` is the newest complete one
    in ``run_dir/checkpoints`` (None if there is none yet)."""
    if resume is None:
        return None
    if resume != "auto":
        return Path(resume)
    from ct_core.train.checkpoint import CheckpointManager

    folder = run_dir / "checkpoints"
    return CheckpointManager(folder).latest() if folder.is_dir() else None


def claim_run_dir(run_dir: Path, cfg: RunConfig) -> RunClaim:
    """Checks 1-5 of the module docstring; idempotent within a process."""
    check_writable_dir(run_dir, RUN_DIR_KEY)
    if not is_main_process():
        return RunClaim(None, resume_source(run_dir, cfg.resume))
    known = _CLAIMED.get(run_dir.resolve())
    if known is not None:
        return known
    try:
        hold_run_dir(run_dir)
    except OSError as err:
        raise ConfigError(f"{RUN_DIR_KEY}={run_dir}: cannot create it ({err.strerror}); "
                          "choose a writable location") from None
    source = resume_source(run_dir, cfg.resume)
    payload = None
    if source is not None:
        from ct_core.cli.run_setup import check_compatible
        from ct_core.train.checkpoint import load_checkpoint

        payload = load_checkpoint(source, for_resume=True, mmap=True)  # tensors stay on disk
        check_compatible(source, payload["config"], cfg.raw)
    continues = holds_run(run_dir)
    if continues and cfg.resume != "auto" and (source is None or not same_run(run_dir, source, payload)):
        if not cfg.trainer.overwrite:
            if source is not None:
                raise foreign_checkpoint_error(run_dir, source, RUN_DIR_KEY)
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with resume=auto, train in a new "
                f"{RUN_DIR_KEY}=..., or replace it with trainer.overwrite=true"
            )
        _delete_run_state(run_dir, keep=source)
        continues = False
    claim = RunClaim(run_id_to_train_under(run_dir, source, payload, continues), source)
    _CLAIMED[run_dir.resolve()] = claim
    return claim


def _delete_run_state(run_dir: Path, keep: Path | None) -> None:
    """Delete what the earlier run left (:data:`RUN_STATE`); refused while
    ``keep``, the checkpoint the new run resumes, lies among it."""
    state = [run_dir / name for name in RUN_STATE]
    if keep is not None and any(lies_in(keep, path) for path in state):
        raise ConfigError(f"resume={keep} lies in the run that trainer.overwrite=true would delete; "
                          f"copy it out of {run_dir} first, or resume it in a new {RUN_DIR_KEY}=...")
    for path in state:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
