"""bench.gpu_check: its dry run on the CPU passes every row that applies
there, with Hydra and the audio libraries hidden, and names the commit it
is given; each row's result is on disk as soon as the row ends (a kill
later loses nothing); rows that raise are recorded and the check goes on;
--only, --skip and --budget pick the rows; its shape is the recipe's;
data-sheet peaks are found by device name, the most specific name first."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench import gpu_check
from bench.gpu_check import ROW_NAMES, Row, main, parse_args, run_row
from bench.gpu_context import SPEECH_CT, CheckContext
from bench.peaks import bf16_peak_flops_of
from bench.report import REPO
from bench.shapes import get_shape

HIDDEN = ("hydra", "omegaconf", "librosa", "soundfile", "torchaudio")
BLOCKER = f"""import sys

class HideModules:
    # What a bare GPU image lacks: importing any of these fails.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDDEN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden)")
        return None

sys.meta_path.insert(0, HideModules())
"""
CUDA_ONLY = ("flex_bf16", "decode_bf16")


def bare_image_env(tmp_path) -> dict[str, str]:
    """Environment of a process in which the hidden modules cannot be imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                CT_COMMIT="0123abc")


def read_rows(out):
    (jsonl,) = out.glob("gpu_*.jsonl")
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


@pytest.mark.slow
def test_dry_run_passes_every_row_without_hydra_or_audio_libraries(tmp_path):
    env = bare_image_env(tmp_path)
    for name in HIDDEN:  # the blocker works
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert probe.returncode == 1 and "(hidden)" in probe.stderr, (name, probe.stderr)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--steps", "2",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_rows(out)
    assert [r["row"] for r in rows] == list(ROW_NAMES)
    for r in rows:
        want = "skipped" if r["row"] in CUDA_ONLY else "ok"
        assert r["status"] == want and r["error"] is None, r
    by_name = {r["row"]: r for r in rows}
    assert by_name["decode_fp32"]["values"]["tokens_agreeing"] == 2000
    for name in ("train", "train_checkpointing", "ddp"):
        values = by_name[name]["values"]
        assert values["skipped_updates"] == 0 and values["graphs_in_steady_windows"] == 0
        # Real targets: document ends leave padded positions, which are not counted.
        assert 0 < values["tokens_seen"] < values["lane_tokens"]
    assert by_name["ddp"]["values"]["ddp"] and not by_name["train"]["values"]["ddp"]
    (report,) = out.glob("gpu_*.md")
    text = report.read_text()
    assert "- commit: `0123abc`" in text and "Every row that ran passed." in text
    assert "| decode_bf16 |" in text and "needs CUDA" in text


@pytest.mark.slow
def test_a_kill_after_the_first_row_keeps_its_result(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--steps", "2",
                             "--only", "gemm_peak,train,sampling", "--out", str(out)], cwd=REPO,
                            env=bare_image_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        files = list(out.glob("gpu_*.jsonl"))
        if files and files[0].read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None  # still running the second row
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (row,) = read_rows(out)
    assert row["row"] == "gemm_peak" and row["status"] == "ok" and row["values"]["gemm_flops"] > 0
    (report,) = out.glob("gpu_*.md")
    assert "| gemm_peak |" in report.read_text() and "| train |" not in report.read_text()


def test_a_row_that_raises_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    def exits(ctx):
        raise SystemExit("a library gave up\nsecond line")

    rows = (Row("first", "raises", exits, 1, 1), *[r for r in gpu_check.ROWS if r.name == "gemm_peak"])
    monkeypatch.setattr(gpu_check, "ROWS", rows)
    monkeypatch.setattr(gpu_check, "ROW_NAMES", ("first", "gemm_peak"))
    assert main(["--device", "cpu", "--out", str(tmp_path)]) == 1
    first, gemm = read_rows(tmp_path)
    assert (first["row"], first["status"], first["error"]) == ("first", "error", "SystemExit: a library gave up")
    assert "Traceback" in first["traceback"] and gemm["status"] == "ok"
    assert "**1 row(s) failed**: first." in next(tmp_path.glob("*.md")).read_text()


def test_budget_only_and_skip_pick_the_rows(tmp_path):
    assert main(["--device", "cpu", "--only", "gemm_peak,train,sampling", "--skip", "sampling", "--budget", "5",
                 "--out", str(tmp_path)]) == 0
    assert [r["row"] for r in read_rows(tmp_path)] == ["gemm_peak"]  # train (15 s) no longer fits in 5
    assert "Skipped for the budget of 5 s: train." in next(tmp_path.glob("*.md")).read_text()
    with pytest.raises(SystemExit, match=r"^gpu_check: error: --skip trian: no such row; rows: flex_fp32, "):
        parse_args(["--skip", "trian"])


def test_the_default_run_fits_six_minutes_on_one_h200_by_its_estimates():
    assert sum(row.estimate_s for row in gpu_check.ROWS) <= 360


def test_a_stop_signal_caught_by_a_training_row_ends_the_check(tmp_path, monkeypatch):
    from ct_core.train.stop_requests import TrainingStopped

    def stopped(ctx):
        raise TrainingStopped("SIGTERM", signal.SIGTERM, 3, tmp_path / "last.pt")

    rows = (Row("first", "stops", stopped, 1, 1), *[r for r in gpu_check.ROWS if r.name == "gemm_peak"])
    monkeypatch.setattr(gpu_check, "ROWS", rows)
    monkeypatch.setattr(gpu_check, "ROW_NAMES", ("first", "gemm_peak"))
    assert main(["--device", "cpu", "--out", str(tmp_path)]) == 130
    assert [r["row"] for r in read_rows(tmp_path)] == ["first"]
    assert "Stopped during first (TrainingStopped: SIGTERM at step 3" in next(tmp_path.glob("*.md")).read_text()


def test_run_row_records_ctrl_c_as_an_error_line():
    def interrupted(ctx):
        raise KeyboardInterrupt

    result = run_row(Row("r", "", interrupted, 1, 1), CheckContext(parse_args(["--device", "cpu"]), None), 1)
    assert (result.status, result.error) == ("error", "KeyboardInterrupt")


def test_shape_is_the_recipes():
    assert dataclasses.asdict(SPEECH_CT) == dataclasses.asdict(get_shape("speech_ct"))


@pytest.mark.parametrize("device,tflops", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                           ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312),
                                           ("NVIDIA L40S", 362), ("NVIDIA L4", 121), ("NVIDIA A10", 125)])
def test_data_sheet_peaks_by_device_name(device, tflops):
    assert bf16_peak_flops_of(device)[0] == tflops * 1e12


def test_an_unknown_device_has_no_data_sheet_peak():
    name = "NVIDIA Quadro P1000"
    assert bf16_peak_flops_of(name) == (None, f"{name} is not in the table of data-sheet peaks")
