"""Checkpoints: one file per save, written atomically, loadable with ``weights_only``.

A checkpoint is a ``torch.save`` of a plain dict (the *payload*); everything
in it is a tensor, number, string, ``None``, list or dict, so it loads with
``torch.load(weights_only=True)`` and loading never runs code from the file.

Payload keys (the trainer fills them; ``FORMAT_VERSION`` changes when they do):

=================  ============================================================
``format_version`` int, :data:`FORMAT_VERSION`
``package_version`` str, :func:`package_version` of the writer
``run_id``         str, the run that wrote it (:mod:`ct_core.train.run_lineage`; absent in older files)
``config``         the resolved recipe as a plain nested dict
``model``          ``model.state_dict()``
``step``           optimizer steps taken
``optimizer``      ``optimizer.state_dict()``                (training state)
``scheduler``      ``scheduler.state_dict()``                (training state)
``tokens_seen``    target tokens trained on so far            (training state)
``batcher``        ``StreamBatcher.state_dict()``             (training state)
``memory``         dict of the model's memory tensors, may be empty (training state)
``rng``            :func:`capture_rng_state`                  (training state)
``frontend``       ``FrontEnd.state_dict()``
=================  ============================================================

Writing goes to a temporary file beside the target, is flushed to disk, then
renamed over the target (``os.replace`` is atomic; see
:mod:`ct_core.atomic_write`), so a process killed mid-save leaves the
previous checkpoint whole, and a save that fails (whatever ``torch.save``
raises for a full disk) is one line naming the file, the reason and the
newest complete checkpoint. ``last.pt`` is swapped in the same way, as a
hard link to the newest step file where the file system allows (no second
write of a large file), else as a copy.

Example::

    manager = CheckpointManager(run_dir / "checkpoints", keep_last=3)
    manager.save(step, {"format_version": FORMAT_VERSION, ..., "rng": capture_rng_state()})
    payload = load_checkpoint(manager.latest(), for_resume=True)
    restore_rng_state(payload["rng"])
"""

from __future__ import annotations

import importlib.metadata
import os
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ct_core.atomic_write import TMP_SUFFIX, Intact, atomic_path, make_dirs, write_failure
from ct_core.errors import CheckpointError, ConfigError
from ct_core.train.checkpoint_diagnosis import foreign_format, why_unreadable

FORMAT_VERSION = 1
#: keys every checkpoint has; enough for ct-eval, ct-sample and export
REQUIRED_KEYS = ("format_version", "package_version", "config", "model", "step", "frontend")
#: keys a checkpoint needs to resume training exactly
TRAINING_KEYS = ("optimizer", "scheduler", "tokens_seen", "batcher", "memory", "rng")
LAST = "last.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt")


def package_version() -> str:
    try:
        return importlib.metadata.version("compressive-transformer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------ RNG state
def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and initialised CUDA devices),
    numpy and Python's ``random``, as tensors and plain lists/ints."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
        "numpy": {
            "name": str(name),
            "keys": keys.tolist(),  # 624 uint32 words of the Mersenne twister
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`: the next random numbers of every
    generator equal those that followed the capture."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    n = state["numpy"]
    np.random.set_state(
        (n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def save_checkpoint(path: Path, payload: dict[str, Any], intact: Intact = None) -> None:
    """Write ``payload`` to ``path`` atomically (see the module docstring); a
    failed write is a one-line :class:`~ct_core.errors.WriteError` ending in
    ``intact``."""
    with atomic_path(Path(path), intact=intact) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location: Any = "cpu", for_resume: bool = False,
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing, unreadable or
    incomplete file is a one-line :class:`CheckpointError` naming it.
    ``for_resume`` also requires the training state (:data:`TRAINING_KEYS`).
    ``mmap``: tensors are mapped from the file and read when used (every
    rank of a resumed run maps the file; each reads its own memories only)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass a checkpoint file such as {path / LAST}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass a .pt file from <run>/checkpoints/")
    foreign = foreign_format(path)
    if foreign:
        raise CheckpointError(f"{path}: not a readable checkpoint: {foreign}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(f"{path}: not a readable checkpoint: {why_unreadable(path, err)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this package (holds a {type(payload).__name__}, not a dict)")
    required = REQUIRED_KEYS + (TRAINING_KEYS if for_resume else ())
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; it cannot be used for this")
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this package reads "
            f"({FORMAT_VERSION}); upgrade compressive-transformer (written by {payload['package_version']})"
        )
    return payload


def _is_complete(path: Path) -> bool:
    """Whether ``path`` is a whole ``torch.save`` archive. The zip directory
    is written last, so a truncated file fails; nothing is unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


class CheckpointManager:
    """``step_XXXXXXXX.pt`` files plus ``last.pt`` in one directory, keeping
    the newest ``keep_last`` step files (0: only ``last.pt``)."""

    def __init__(self, directory: Path, keep_last: int = 3) -> None:
        if keep_last < 0:
            raise ConfigError(f"keep_last={keep_last} must be >= 0 (0 keeps only {LAST})")
        self.dir = Path(directory)
        self.keep_last = keep_last
        try:
            make_dirs(self.dir)
        except OSError as err:
            raise (write_failure(err, self.dir / LAST, "nothing was written") or err) from None
        # Leftovers of a save that was killed (SIGKILL skips all clean-up).
        for stale in self.dir.glob(f".*.pt.*{TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)

    @property
    def last_path(self) -> Path:
        return self.dir / LAST

    def step_path(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}.pt"

    def step_files(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every step file, oldest first."""
        found = []
        for path in self.dir.iterdir():
            match = _STEP_FILE.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        """Write the step file, point ``last.pt`` at it, prune old step files.

        A write that fails (disk full, file too large, no permission, an I/O
        error) leaves the earlier files as they were, no temporary file, and
        raises a one-line :class:`~ct_core.errors.WriteError` naming the
        file, the reason and the newest complete checkpoint; the caller
        stops there rather than retrying."""
        path = self.step_path(step)

        def intact() -> str:
            return f"{self._newest()}; make room and continue with resume=auto"

        save_checkpoint(path, payload, intact)
        with atomic_path(self.last_path, intact) as tmp:
            tmp.unlink()
            try:
                os.link(path, tmp)
            except OSError:  # no hard links here (some network or Windows file systems)
                shutil.copyfile(path, tmp)
        step_files = self.step_files()
        for _, old in step_files[: max(len(step_files) - self.keep_last, 0)]:
            old.unlink(missing_ok=True)
        return path

    def _newest(self) -> str:
        """``newest complete checkpoint: <path> (step N)``, for messages."""
        newest = self.latest()
        if newest is None:
            return "no complete checkpoint yet"
        step = next((k for k, p in self.step_files() if p == newest or os.path.samefile(p, newest)), None)
        return f"newest complete checkpoint: {newest}" + (f" (step {step})" if step is not None else "")

    def latest(self) -> Path | None:
        """The checkpoint to resume from: ``last.pt`` if complete, else the
        newest complete step file, else ``None``."""
        candidates = [self.last_path] + [path for _, path in reversed(self.step_files())]
        return next((path for path in candidates if path.is_file() and _is_complete(path)), None)


def export_safetensors(checkpoint_path: Path, out_path: Path) -> Path:
    """Write the model weights of a checkpoint as safetensors, with what
    rebuilding model and front end needs in the file's metadata
    (:mod:`ct_core.train.export_format`).

    Tensors that share storage (tied embeddings) or are views are cloned,
    since safetensors stores each tensor on its own.
    """
    from ct_core.train.export_format import export_metadata

    payload = load_checkpoint(checkpoint_path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in payload["model"].items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{checkpoint_path}: model entry {name!r} is not a tensor; cannot export it")
        storage = value.untyped_storage()
        owns_storage = value.is_contiguous() and storage.nbytes() == value.nbytes and value.storage_offset() == 0
        if storage.data_ptr() in seen or not owns_storage:
            value = value.clone(memory_format=torch.contiguous_format)
        seen.add(storage.data_ptr())
        tensors[name] = value
    metadata = export_metadata(payload)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out_path
