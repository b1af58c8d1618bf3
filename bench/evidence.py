"""The evidence study: does compression earn its keep at equal attention cost?

    python -m bench.evidence --quick          # reduced, under 30 minutes on 2 CPU cores
    python -m bench.evidence                  # the CPU study behind docs/results.md (about 2¼ hours)
    python -m bench.evidence --full           # the same comparisons at the GPU recipes' sizes

Each run is a real ``ct-train`` (and ``ct-eval``) command in a subprocess, so
the numbers are what a user's commands give. Runs live under ``--out``
(``runs/evidence/<size>/``); a finished run is never redone, so an
interrupted study resumes where it stopped (a half-trained run continues from
its last checkpoint with ``resume=auto``). The tables and figures go to
``<out>/report.md``; with ``--write-docs`` they also replace the generated
blocks of ``docs/results.md`` and the figures in ``docs/figures/``.

Studies (see :mod:`bench.evidence_studies`): ``recall``, ``shakespeare``,
``pg19``, ``wikitext``, ``speech``, ``ablation``, ``attention`` and ``race``
(the wall-clock comparison with nanoGPT's CPU recipe, in the ``cpu`` size
only: it times the README's command as it stands). ``--only`` picks some;
with ``--write-docs`` it then rewrites only those studies' blocks, each with
the commit and machine it ran on. Studies whose data is missing (``--data``,
default ``../shared/data``) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.evidence_report import write_report
from bench.evidence_studies import RunSpec, Study, all_studies

REPO = Path(__file__).resolve().parents[1]
#: nanoGPT's train_shakespeare_char on 2 cores of an AMD EPYC (2,000 iterations), whole command.
NANOGPT = {"seconds": 133.0, "valid_nats": 1.886}
#: A ct-train command timed on those same 2 EPYC cores (197 s, whole command): the
#: shakespeare recipe as it stood then. Timing it again on the machine at hand
#: scales nanoGPT's 133 s to that machine.
CALIBRATION = {"seconds_on_nanogpt_machine": 197.0,
               "overrides": ("compression=conv_attention", "trainer.steps=800", "trainer.batch_size=12",
                             "eval.batch_size=12")}


def script(name: str) -> list[str]:
    """A console script beside this interpreter (the module when not installed)."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    module = {"ct-train": "train", "ct-eval": "evaluate"}[name]
    return [sys.executable, "-m", f"ct_core.cli.{module}"]


def run_logged(cmd: list[str], log: Path) -> tuple[float, str]:
    """Run ``cmd``, appending its output to ``log``; returns (seconds, stdout).
    A failure raises with the end of the log."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n[{seconds:.1f} s, exit {proc.returncode}]\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}); see {log}\n{tail}")
    return seconds, proc.stdout


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def last_valid_metrics(run_dir: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "valid"][-1]


def parameter_counts(checkpoint: Path) -> dict[str, int]:
    """Parameters of the model in ``checkpoint``: all, and those of the
    compressors and autoencoding decoders (which only a compression loss trains)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["model"]
    total = sum(v.numel() for v in state.values())
    side = sum(v.numel() for k, v in state.items() if k.startswith(("compressors.", "decoders.")))
    return {"parameters": total, "compressor_parameters": side}


def train(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Train ``spec`` unless its result exists; returns the result."""
    done = run_dir / "train_result.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    seconds, stdout = run_logged(script("ct-train") + spec.train_args(run_dir), run_dir / "evidence.log")
    checkpoint = run_dir / "checkpoints" / "last.pt"
    result = {"experiment": spec.experiment, "overrides": list(spec.overrides), "seed": spec.seed,
              "train_seconds": round(seconds, 1), "valid": last_valid_metrics(run_dir),
              **parameter_counts(checkpoint)}
    write_json(done, result)
    return result


def evaluate(spec: RunSpec, run_dir: Path) -> dict[str, Any] | None:
    """ct-eval the run's checkpoint on ``spec.eval_split`` (with the attention
    report when asked) unless done; returns the last JSON line."""
    if spec.eval_split is None and not spec.attention_report:
        return None
    split = spec.eval_split or "valid"
    done = run_dir / f"evidence_eval_{split}{'_attention' if spec.attention_report else ''}.json"
    if done.is_file():
        return json.loads(done.read_text())
    cmd = script("ct-eval") + [str(run_dir / "checkpoints" / "last.pt"), f"split={split}"]
    if spec.attention_report:
        cmd.append("--attention-report")
    seconds, stdout = run_logged(cmd, run_dir / "evidence.log")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["eval_seconds"] = round(seconds, 1)
    write_json(done, report)
    return report


def run_study(study: Study, out: Path, progress: dict[str, int]) -> list[dict[str, Any]]:
    """Every run of ``study`` (shared runs are trained once); one line each."""
    results = []
    for spec in study.runs:
        run_dir = out / "runs" / spec.run_dir_name
        progress["done"] += 1
        head = f"[{progress['done']}/{progress['total']}] {study.name}: {spec.label} seed {spec.seed}"
        cached = (run_dir / "train_result.json").is_file()
        print(f"{head} ...{' (done before)' if cached else ''}", flush=True)
        trained = train(spec, run_dir)
        evaluated = evaluate(spec, run_dir)
        metrics = dict(trained["valid"])
        if evaluated is not None and spec.eval_split is not None:
            metrics = evaluated
        value = metrics.get(study.metric)
        shown = f"{study.metric} {value:.4f}" if isinstance(value, float) else f"{study.metric} ?"
        print(f"{head}: {shown}, trained in {trained['train_seconds']:.0f} s", flush=True)
        results.append({"label": spec.label, "seed": spec.seed, "run_dir": str(run_dir), "metrics": metrics,
                        "train": trained, "eval": evaluated})
    return results


def timed_shakespeare(run_dir: Path, data: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    """The README's shakespeare command (with ``overrides``), timed as a whole; cached in ``run_dir``."""
    done = run_dir / "race_result.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = script("ct-train") + ["experiment=text/shakespeare_cpu", f"data.path={data / 'text' / 'tinyshakespeare.txt'}",
                                *overrides, f"hydra.run.dir={run_dir}", "trainer.overwrite=true"]
    seconds, _ = run_logged(cmd, run_dir / "evidence.log")
    valid = last_valid_metrics(run_dir)
    result = {"command": " ".join(["ct-train experiment=text/shakespeare_cpu data.path=tinyshakespeare.txt",
                                   *overrides]),
              "seconds": round(seconds, 1), "valid_nats": valid["nll"], "valid_bpc": valid.get("bpc")}
    write_json(done, result)
    return result


def race(out: Path, data: Path, progress: dict[str, int]) -> dict[str, Any]:
    """The README's shakespeare command against nanoGPT's CPU recipe, with
    nanoGPT's time scaled to this machine by a command timed on both."""
    progress["done"] += 1
    print(f"[{progress['done']}/{progress['total']}] race: ct-train experiment=text/shakespeare_cpu ...", flush=True)
    result = timed_shakespeare(out / "runs" / "race_shakespeare_cpu", data, ())
    calibration = timed_shakespeare(out / "runs" / "race_calibration", data, CALIBRATION["overrides"])
    scale = calibration["seconds"] / CALIBRATION["seconds_on_nanogpt_machine"]
    result = {**result, "nanogpt": {**NANOGPT, "seconds_here": round(NANOGPT["seconds"] * scale, 1)},
              "calibration": {**calibration, "seconds_on_nanogpt_machine": CALIBRATION["seconds_on_nanogpt_machine"],
                              "scale": round(scale, 3)}}
    print(f"race: {result['seconds']:.0f} s, {result['valid_nats']:.3f} nats/char (nanoGPT: "
          f"{result['nanogpt']['seconds_here']:.0f} s on this machine, {NANOGPT['valid_nats']} nats/char)", flush=True)
    return result


def missing_data(study: Study, data: Path) -> str | None:
    needs = {"shakespeare": "text/tinyshakespeare.txt", "ablation": "text/tinyshakespeare.txt",
             "attention": "text/tinyshakespeare.txt", "race": "text/tinyshakespeare.txt",
             "pg19": "text/pg19_sample", "wikitext": "text/wikitext2_sample", "speech": "speech/librispeech_sample"}
    need = needs.get(study.name)
    if need and not (data / need).exists():
        return f"{data / need} not found (give --data DIR holding text/ and speech/)"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.evidence", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="size", help="reduced study (<30 min, CPU)")
    size.add_argument("--full", action="store_const", const="full", dest="size", help="GPU recipe sizes")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding text/ (tinyshakespeare.txt, pg19_sample/, wikitext2_sample/) and speech/ "
                        "(librispeech_sample/)")
    parser.add_argument("--out", type=Path, default=None, help="where runs and report go (default runs/evidence/<size>)")
    parser.add_argument("--only", nargs="+", default=None, metavar="STUDY",
                        help="recall shakespeare pg19 wikitext speech ablation attention race")
    parser.add_argument("--write-docs", action="store_true", help="also rewrite docs/results.md and docs/figures/")
    args = parser.parse_args(argv)
    size = args.size or "cpu"
    out = (args.out or REPO / "runs" / "evidence" / size).resolve()
    data = args.data.resolve()
    studies = [s for s in all_studies(size, data) if args.only is None or s.name in args.only]
    with_race = size == "cpu" and (args.only is None or "race" in args.only)
    ready = []
    for study in studies:
        reason = missing_data(study, data)
        if reason:
            print(f"skipping {study.name}: {reason}", flush=True)
        else:
            ready.append(study)
    if with_race and missing_data(Study("race", "", ""), data):
        print(f"skipping race: {missing_data(Study('race', '', ''), data)}", flush=True)
        with_race = False
    progress = {"done": 0, "total": sum(len(s.runs) for s in ready) + int(with_race)}
    results = {study.name: {"study": study, "runs": run_study(study, out, progress)} for study in ready}
    race_result = race(out, data, progress) if with_race else None
    report = write_report(results, race_result, size=size, out=out, write_docs=args.write_docs,
                          partial=args.only is not None)
    print(f"report: {report}", flush=True)


if __name__ == "__main__":
    main()
