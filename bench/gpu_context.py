"""What the rows of ``bench.gpu_check`` share: the options, the device,
the shapes they run at, and what one row measured that a later one uses
(the measured GEMM peak, FlexAttention's self-test verdicts, the plain
training row's rate); and what a row returns.

Only torch and the project are imported on this path (no Hydra, no audio
libraries), so the check runs on a bare GPU image.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from bench.peaks import measure_gemm_peak
from bench.shapes import Shape

#: Recipe shapes, one GPU holding the recipe's whole batch (an H200 fits
#: speech_ct's 32 lanes: about 1.3 GiB of activations per lane,
#: bench/results/activation_memory_*.md). A test checks them against the recipes.
SPEECH_CT = Shape("speech_ct", n_layers=20, d_model=384, n_heads=6, d_ff=1024, seq_len=768, mem_len=768,
                  cmem_len=768, compression_rate=4, batch_size=32, dropout=0.1, sample_rate=24000)


def dry_shape(shape: Shape) -> Shape:
    """A few-second CPU stand-in with the recipe's compression and layout."""
    return shape.replace(n_layers=2, d_model=32, n_heads=2, d_ff=64, seq_len=24, mem_len=24, cmem_len=12,
                         batch_size=2)


@dataclass
class Outcome:
    """A row's verdict: ``passed`` (None: does not apply on this device,
    ``summary`` says why), one line, and the numbers behind it."""

    passed: bool | None
    summary: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckContext:
    args: argparse.Namespace
    device: torch.device
    _gemm_peak: float | None = None
    _self_tests: dict[tuple, BaseException | None] = field(default_factory=dict)
    training: dict[str, dict[str, Any]] = field(default_factory=dict)  # row -> its values, for comparisons

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def speech(self) -> Shape:
        return SPEECH_CT if self.cuda else dry_shape(SPEECH_CT)

    @property
    def compile_backend(self) -> str | None:
        return None if self.args.compile_backend == "none" else self.args.compile_backend

    def gemm_peak(self) -> float:
        """FLOP/s of the best square bf16 matmul (fp32 on a CPU), measured once."""
        if self._gemm_peak is None:
            sizes = None if self.cuda else (256, 512)
            _, gflops, _ = measure_gemm_peak(self.device, torch.bfloat16 if self.cuda else torch.float32, sizes,
                                             windows=3)
            self._gemm_peak = gflops * 1e9
        return self._gemm_peak

    def self_test(self, flex_self_test: Callable[..., None]) -> Callable[..., None]:
        """``flex_self_test``, run once per (device, precision, execution) in
        this process: every training row would otherwise compile it again."""
        def once(device: torch.device, precision: str, execution: Any) -> None:
            key = (str(device), precision, execution)
            if key not in self._self_tests:
                try:
                    flex_self_test(device, precision, execution)
                    self._self_tests[key] = None
                except Exception as err:  # noqa: BLE001 - remembered, and raised again each time
                    self._self_tests[key] = err
            if self._self_tests[key] is not None:
                raise self._self_tests[key]
        return once
