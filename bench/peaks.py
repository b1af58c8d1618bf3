"""Peak numbers of the hardware, against which the benchmarks rate
themselves: the GEMM rate and copy bandwidth measured in the same run, the
data-sheet dense bf16 peak of known GPUs, and the TF32 switch for what
stays fp32.

Example::

    size, gflops, per_size = measure_gemm_peak(torch.device("cuda"), torch.bfloat16)
    flops, source = bf16_peak_flops(torch.device("cuda"))   # 989e12 on an H100 SXM or H200
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from bench.timing import interleaved_windows, median


def gemm_calls(device: torch.device, flops: float) -> int:
    """Matmuls per timed window: ~2 GFLOP on a CPU (over 10 ms), ~50 TFLOP on a GPU."""
    return max(1, int((5e13 if device.type == "cuda" else 2e9) // flops))


def gemm_task(device: torch.device, dtype: torch.dtype, n: int) -> tuple[Callable[[], None], float]:
    """A square matmul ``[n, n] @ [n, n]`` and its FLOPs (2·n³)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=c)), 2.0 * n**3


def measure_gemm_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, sizes: Sequence[int] | None = None,
    windows: int = 5,
) -> tuple[int, float, dict[int, float]]:
    """Best square size, its GFLOP/s and every size's GFLOP/s (fastest window).

    This only picks the size; the peak used for MFU is timed again in the
    same rounds as the models (see train_throughput). The fastest window is
    the least disturbed by other jobs, which is what choosing a size needs.
    """
    per_size: dict[int, float] = {}
    sizes = sizes or ((4096, 8192, 16384) if device.type == "cuda" else (1024, 2048, 3072))
    for n in sizes:
        fn, flops = gemm_task(device, dtype, n)
        calls = gemm_calls(device, flops)
        fn()
        times = [w.seconds for w in interleaved_windows({"gemm": fn}, windows, calls, device)["gemm"]]
        per_size[n] = flops * calls / min(times) / 1e9
    best = max(per_size, key=per_size.get)
    return best, per_size[best], per_size


def measure_copy_bandwidth(device: torch.device, mib: int = 256, windows: int = 5, max_wait: float = 0.0) -> float:
    """GB/s of ``dst.copy_(src)`` on buffers far larger than the caches;
    every copied byte is read once and written once (2 × size moved).
    Median over quiet windows (all windows when none was quiet)."""
    n = mib * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ws = interleaved_windows({"copy": lambda: dst.copy_(src)}, windows, 3, device, max_wait)["copy"]
    times = [w.seconds for w in ws if w.quiet] or [w.seconds for w in ws]
    return 2 * src.numel() * 4 * 3 / median(times) / 1e9


#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors'
#: data sheets, by a substring of torch.cuda.get_device_name; the first
#: match wins, so more specific names come first.
BF16_DENSE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
)


def bf16_peak_flops_of(name: str) -> tuple[float | None, str]:
    """Dense bf16 peak (FLOP/s) of the CUDA device called ``name`` and where
    it comes from; ``None`` when it is not in :data:`BF16_DENSE_PEAK_TFLOPS`."""
    for key, tflops in BF16_DENSE_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOP/s dense bf16 ({key} data sheet)"
    return None, f"{name} is not in the table of data-sheet peaks"


def bf16_peak_flops(device: torch.device) -> tuple[float | None, str]:
    """:func:`bf16_peak_flops_of` this device (``None`` on a CPU: the caller
    falls back to a measured GEMM rate)."""
    if device.type != "cuda":
        return None, "no data-sheet peak for a CPU"
    return bf16_peak_flops_of(torch.cuda.get_device_name(device))


def allow_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (CUDA only):
    what is left in fp32 under bf16 autocast, or all of an fp32 run."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
