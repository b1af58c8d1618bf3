"""What a ``ct-export`` file holds, and reading it back.

An export is a safetensors file whose tensors are exactly the model's
``state_dict()`` (so ``safetensors.torch.load_file`` feeds
``model.load_state_dict`` directly) and whose string metadata carries what
rebuilding the model and its front end needs, without the corpus:

=================  ============================================================
``format``         ``pt`` (the safetensors convention for PyTorch tensors)
``export_format``  :data:`EXPORT_FORMAT`, as a string
``config``         the resolved recipe, JSON
``frontend``       ``FrontEnd.state_dict()`` (a SentencePiece model, say), JSON;
                   a tensor in it is ``{"__tensor__": {dtype, shape, base64}}``
``step``           the checkpoint's optimizer step
``package_version`` the version of the package that trained it
=================  ============================================================

The front end's tensors travel in the metadata rather than as tensors of
the file so that the file's tensors stay the model's and nothing else.

Example::

    metadata = export_metadata(payload)          # payload: a loaded checkpoint
    payload = read_export(Path("demo.safetensors"))
    payload["config"]["model"]["d_model"]
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from ct_core.errors import CheckpointError

EXPORT_FORMAT = 1
#: metadata keys an export must have to rebuild model and front end
REQUIRED_METADATA = ("config", "frontend")
_TENSOR = "__tensor__"


def _encode(value: Any) -> Any:
    """Front-end state as JSON-ready values: tensors become base64 bytes."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return {_TENSOR: {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                          "base64": base64.b64encode(raw).decode("ascii")}}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    """Undo :func:`_encode`."""
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            spec = value[_TENSOR]
            dtype = getattr(torch, spec["dtype"])
            raw = base64.b64decode(spec["base64"])
            if not raw:
                return torch.zeros(spec["shape"], dtype=dtype)
            return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(spec["shape"]).clone()
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def export_metadata(payload: Mapping[str, Any]) -> dict[str, str]:
    """The metadata of the export of a loaded checkpoint ``payload``."""
    return {
        "format": "pt",
        "export_format": str(EXPORT_FORMAT),
        "config": json.dumps(payload["config"]),
        "frontend": json.dumps(_encode(payload["frontend"])),
        "step": str(int(payload["step"])),
        "package_version": str(payload["package_version"]),
    }


def read_export(path: Path) -> dict[str, Any]:
    """An export as a checkpoint-like payload (``config``, ``model``,
    ``frontend``, ``step``, ``package_version``); an export that lacks what
    rebuilding needs, or is damaged, is a one-line :class:`CheckpointError`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable safetensors export ({reason})") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise CheckpointError(
            f"{path}: this export lacks {' and '.join(missing)} in its metadata, so the model cannot be "
            "rebuilt from it; export the .pt checkpoint again with ct-export, or pass the checkpoint itself"
        )
    version = int(metadata.get("export_format", EXPORT_FORMAT))
    if version > EXPORT_FORMAT:
        raise CheckpointError(f"{path}: export format {version} is newer than this package reads ({EXPORT_FORMAT}); "
                              f"upgrade compressive-transformer (written by {metadata.get('package_version')})")
    try:
        config, frontend = json.loads(metadata["config"]), _decode(json.loads(metadata["frontend"]))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: the export's metadata is damaged ({type(err).__name__}); "
                              "export the checkpoint again with ct-export") from None
    return {"format_version": 1, "package_version": metadata.get("package_version", "unknown"),
            "config": config, "model": tensors, "step": int(metadata.get("step", 0)), "frontend": frontend}
