"""Where and how a run computes: device resolution, mixed precision, seeds,
threads and determinism, and full fp32 for comparisons against a
reference. Shared by ct-train, ct-eval and ct-sample so the three agree on
what ``auto`` means.

Example::

    device = resolve_device("auto")                 # cuda:0 if there is one, else cpu
    with autocast_context(device, "auto"):          # bf16 on CUDA, fp32 on CPU
        out = model(tokens)
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch

from ct_core.errors import ConfigError
from ct_core.train.distributed import DistContext


def device_kind(name: str) -> str:
    """``cuda`` or ``cpu``: what ``name`` (auto, cpu, cuda, cuda:N) will run on."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def resolve_device(name: str, ctx: DistContext | None = None, option: str = "trainer.device=") -> torch.device:
    """The device ``name`` stands for; under torchrun each rank takes its
    local GPU. ``option`` is how the user spells the setting (``--device ``
    on a command line), so that a one-line error can name it."""
    ctx = ctx or DistContext()
    try:
        device = torch.device(device_kind(name) if name == "auto" else name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option}{name} is not a device; use {option}auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{option}{name} is not supported; use {option}auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}{name} but no CUDA device is available; use {option}cpu")
        if ctx.enabled:
            return torch.device("cuda", ctx.local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{option}{name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA only; CPU runs stay fp32 (bf16 matmuls are slow there)."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions in full fp32 (TF32 off) inside, as
    they were outside afterwards: for comparisons against a reference,
    where TF32's 10-bit mantissa would pass for a bug. Throughput keeps
    whatever the run set."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_torch(threads: int | None, deterministic: bool) -> None:
    """CPU threads (None: torch's default) and deterministic kernels."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
