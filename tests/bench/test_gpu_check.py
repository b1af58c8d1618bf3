"""bench.gpu_check: its dry run on the CPU passes every part and writes its
report; its shapes are the recipes'; data-sheet peaks are found by device
name, the most specific name first."""

import dataclasses
import subprocess
import sys

import pytest

from bench.report import REPO
from bench.shapes import get_shape
from bench.gpu_check import SHAPES
from bench.peaks import bf16_peak_flops_of


def test_dry_run_passes_every_part_and_writes_the_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--steps", "2",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report,) = tmp_path.glob("gpu_*.md")
    text = report.read_text()
    assert "All parts passed." in text and "FAILED" not in text
    for part in ("FlexAttention vs SDPA: logits", "fixed-shape (eager on CPU) decoding", "| speech_ct | 2 |",
                 "| enwik8_ct | 2 |", "RTF (all streams)", "| 64 |", "needs two CUDA devices"):
        assert part in text, part


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_are_the_recipes(name):
    recipe = dataclasses.asdict(get_shape(name))
    mine = dataclasses.asdict(SHAPES[name])
    recipe.pop("batch_size"), mine.pop("batch_size")  # gpu_check trains a per-GPU share
    assert mine == recipe


@pytest.mark.parametrize("device,tflops", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                           ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312),
                                           ("NVIDIA L40S", 362), ("NVIDIA L4", 121), ("NVIDIA A10", 125)])
def test_data_sheet_peaks_by_device_name(device, tflops):
    assert bf16_peak_flops_of(device)[0] == tflops * 1e12


def test_an_unknown_device_has_no_data_sheet_peak():
    name = "NVIDIA Quadro P1000"
    assert bf16_peak_flops_of(name) == (None, f"{name} is not in the table of data-sheet peaks")
