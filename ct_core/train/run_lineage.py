"""One lineage per run directory: which run a checkpoint belongs to, and
whether resuming it may write into a given run directory.

A run is identified by a *run id*, a random hex string drawn when a run
starts in a directory: fresh, or resumed from another directory's
checkpoint (a branch is a new run). It is recorded in
``<run_dir>/run.json`` before training starts and stored in every
checkpoint the run saves (``payload["run_id"]``). A run directory that
already holds a run accepts only its own checkpoints: another run's would
replace its ``last.pt``, drop its metrics rows past the checkpoint's step
and leave step files of two runs side by side.

Checkpoints and directories written before run ids existed have none:
such a checkpoint belongs to the directory it lies in (which is what
``resume=auto`` and ``resume=<run_dir>/checkpoints/step_N.pt`` give), and
to no other.

Example::

    if holds_run and not same_run(run_dir, source, payload):
        raise foreign_checkpoint_error(run_dir, source, "hydra.run.dir")
    run_id = run_id_to_train_under(run_dir, source, payload, continues=True)
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Mapping

from ct_core.atomic_write import write_text
from ct_core.errors import ConfigError

RUN_FILE = "run.json"
#: The checkpoint payload key holding the id of the run that wrote it.
RUN_ID_KEY = "run_id"


def new_run_id() -> str:
    """A fresh run id (32 hex digits)."""
    return uuid.uuid4().hex


def _valid(run_id: Any) -> str | None:
    return run_id if isinstance(run_id, str) and run_id else None


def directory_run_id(run_dir: Path) -> str | None:
    """The run id recorded in ``run_dir/run.json``; None for a directory
    without one (new, or written before run ids existed)."""
    try:
        record = json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return _valid(record.get(RUN_ID_KEY)) if isinstance(record, dict) else None


def checkpoint_run_id(payload: Mapping[str, Any]) -> str | None:
    """The run id a checkpoint carries; None for one written before run ids."""
    return _valid(payload.get(RUN_ID_KEY))


def lies_in(path: Path, folder: Path) -> bool:
    """Whether ``path`` is inside ``folder`` (after resolving links)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def same_run(run_dir: Path, source: Path, payload: Mapping[str, Any]) -> bool:
    """Whether checkpoint ``source`` (loaded as ``payload``) was written by
    the run ``run_dir`` holds: equal run ids where both are known, else
    (an older checkpoint or directory) whether it lies in
    ``run_dir/checkpoints``."""
    mine, theirs = directory_run_id(run_dir), checkpoint_run_id(payload)
    if mine and theirs:
        return mine == theirs
    return lies_in(source, Path(run_dir) / "checkpoints")


def foreign_checkpoint_error(run_dir: Path, source: Path, run_dir_key: str) -> ConfigError:
    """The one-line refusal to resume another run's checkpoint ``source``
    into ``run_dir``, which holds a run."""
    return ConfigError(
        f"resume={source} is a checkpoint of another run, and {run_dir} already holds a run; resume it "
        f"in a new {run_dir_key}=..., or replace the run in {run_dir} with trainer.overwrite=true"
    )


def run_id_to_train_under(run_dir: Path, source: Path | None, payload: Mapping[str, Any] | None,
                          continues: bool) -> str:
    """The run id of the run starting in ``run_dir``, recorded in its
    ``run.json``. ``continues``: it carries on the run the directory holds
    (which keeps its id; an older directory without one adopts its
    checkpoint's, else a new one). Otherwise it is a new run, fresh or a
    branch from ``source`` (noted in the record)."""
    if continues:
        run_id = directory_run_id(run_dir)
        if run_id:
            return run_id
        run_id = (checkpoint_run_id(payload) if payload is not None else None) or new_run_id()
        _write_record(run_dir, {RUN_ID_KEY: run_id})
        return run_id
    run_id = new_run_id()
    record: dict[str, Any] = {RUN_ID_KEY: run_id}
    if source is not None and payload is not None:
        record["branched_from"] = {"checkpoint": str(Path(source).resolve()), "step": int(payload["step"]),
                                   RUN_ID_KEY: checkpoint_run_id(payload)}
    _write_record(run_dir, record)
    return run_id


def _write_record(run_dir: Path, record: Mapping[str, Any]) -> None:
    """``run_dir/run.json``, written to a temporary file and renamed into
    place; a failed write is a one-line error and leaves no file behind."""
    write_text(Path(run_dir) / RUN_FILE, json.dumps(record, indent=2) + "\n",
               intact="nothing was trained; make room or choose another hydra.run.dir")
