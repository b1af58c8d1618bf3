"""Every command that writes, walked through real faults in a child process.

The faults are the operating system's own, not mocks:

- ``too large``: ``resource.setrlimit(RLIMIT_FSIZE)`` in the child, so the
  write stops part-way with EFBIG, as on a full disk (libraries report it
  as ``RuntimeError ... unexpected pos`` (torch.save), ``LibsndfileError``,
  ``SafetensorError``, a bare ``OSError`` (numpy));
- ``permission``: a folder or file without write permission, the child
  running without the capability that lets root ignore permissions;
- ``file``: a file (or folder) where the command needs the other.

Each case asserts: exit 2, the last line of stderr is one ``prog: error:``
line naming the file and the reason, no traceback, no temporary file left,
and what was there before is unchanged and loadable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import soundfile as sf
from safetensors.torch import load_file

from ct_core.data.token_store import MANIFEST
from ct_core.train.checkpoint import load_checkpoint
from tests.conftest import run_cli, script
from tests.reliability.conftest import (
    AUDIO, SMOKE, assert_ends_in_one_line_error, read_only, run_unprivileged, untrained_checkpoint,
)
from tests.reliability.test_prepare_faults import audio_corpus, text_corpus

TEXT = ["experiment=smoke/synthetic", "data=text_file", "data.path=unused.txt"]
#: SMOKE resumed from its step 12 to step 18 (one more save, two more metrics rows)
MORE = [a for a in SMOKE if not a.startswith("trainer.steps=")] + ["trainer.steps=18", "resume=auto"]


@dataclasses.dataclass
class Case:
    prog: str
    args: list[str]
    needles: list[str]
    intact: Callable[[], None] = lambda: None  # asserts what must be unchanged
    watch: list[Path] = dataclasses.field(default_factory=list)  # folders that must hold no temporary file
    limit: int | None = None  # RLIMIT_FSIZE of the child, bytes
    unprivileged: bool = False


def run_case(case: Case, cwd: Path) -> subprocess.CompletedProcess:
    if case.unprivileged:
        return run_unprivileged(case.prog, *case.args, cwd=cwd, timeout=300)
    limit = case.limit

    def limit_file_size() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(script(case.prog) + case.args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env, preexec_fn=limit_file_size)


# ------------------------------------------------------------------ shared inputs
@pytest.fixture(scope="module")
def inputs(smoke_run, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of each front end and earlier outputs of every command,
    made once; a case copies what it changes."""
    root = tmp_path_factory.mktemp("real_faults")
    audio = untrained_checkpoint(root / "audio" / "checkpoints" / "last.pt", AUDIO)
    text = untrained_checkpoint(root / "text" / "checkpoints" / "last.pt", TEXT)
    run_cli("ct-sample", str(audio), "--seconds", "0.2", "--seed", "1", "--out", str(root / "earlier" / "a.wav"))
    run_cli("ct-sample", str(text), "--tokens", "100", "--seed", "1", "--out", str(root / "earlier" / "t.txt"))
    run_cli("ct-export", str(smoke_run / "checkpoints" / "last.pt"), str(root / "earlier" / "m.safetensors"))
    return {"smoke": smoke_run, "audio": audio, "text": text, "earlier": root / "earlier"}


def copy_run(inputs, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(inputs["smoke"], run)
    return run


def earlier(inputs, name: str, folder: Path) -> tuple[Path, bytes]:
    """A copy of an earlier output ``name`` in ``folder``, and its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = shutil.copyfile(inputs["earlier"] / name, folder / name)
    return Path(path), Path(path).read_bytes()


def unchanged(path: Path, content: bytes, load: Callable[[Path], object] = lambda p: None) -> Callable[[], None]:
    def check() -> None:
        assert path.read_bytes() == content, f"{path} changed"
        load(path)
    return check


def last_at(run: Path, step: int) -> Callable[[], None]:
    def check() -> None:
        assert load_checkpoint(run / "checkpoints" / "last.pt", for_resume=True)["step"] == step
    return check


def still_a_folder(path: Path) -> Callable[[], None]:
    def check() -> None:
        assert path.is_dir(), f"{path} was replaced"
    return check


def empty(folder: Path) -> Callable[[], None]:
    def check() -> None:
        assert list(folder.rglob("*")) == [], "something was written"
    return check


def file_in_place_of(tmp_path: Path, folder: str) -> Case:
    """A new run whose ``folder`` (a folder ct-train writes into) is a file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / folder).write_text("not a folder")
    return Case("ct-train", [*SMOKE, f"hydra.run.dir={run}"], [f"{run / folder} is a file, not a folder"],
                unchanged(run / folder, b"not a folder"), [run])


# --------------------------------------------------------------------- the cases
def train_checkpoint(fault, inputs, tmp_path) -> Case:
    if fault == "file":
        return file_in_place_of(tmp_path, "checkpoints")
    run = copy_run(inputs, tmp_path)
    target = run / "checkpoints" / "step_00000018.pt"
    newest = f"newest complete checkpoint: {run / 'checkpoints' / 'last.pt'}"
    if fault == "permission":
        read_only(run / "checkpoints")
        return Case("ct-train", [*MORE, f"hydra.run.dir={run}"], [f"could not write {target} (Permission denied",
                    newest], last_at(run, 12), [run / "checkpoints"], unprivileged=True)
    return Case("ct-train", [*MORE, f"hydra.run.dir={run}"], [f"could not write {target} (File too large", newest],
                last_at(run, 12), [run / "checkpoints"], limit=200_000)


def train_metrics(fault, inputs, tmp_path) -> Case:
    if fault == "file":
        run = tmp_path / "run"
        (run / "metrics.jsonl").mkdir(parents=True)
        return Case("ct-train", [*SMOKE, f"hydra.run.dir={run}"], [f"{run / 'metrics.jsonl'} is a folder"],
                    still_a_folder(run / "metrics.jsonl"), [run])
    run = copy_run(inputs, tmp_path)
    metrics = run / "metrics.jsonl"
    if fault == "permission":
        before = metrics.read_bytes()
        metrics.chmod(0o444)
        return Case("ct-train", [*MORE, f"hydra.run.dir={run}"], [f"could not write {metrics} (Permission denied"],
                    unchanged(metrics, before), [run], unprivileged=True)
    # Longer than Hydra's own files, so that the next metrics row is the first write over the limit.
    rows = metrics.read_text()
    metrics.write_text(rows * (8000 // len(rows) + 1))
    before = metrics.read_bytes()
    return Case("ct-train", [*MORE, f"hydra.run.dir={run}"],
                [f"could not append to {metrics} (File too large", "its earlier rows are intact"],
                unchanged(metrics, before), [run], limit=len(before) + 60)


def train_tensorboard(fault, inputs, tmp_path) -> Case:
    if fault == "file":
        return file_in_place_of(tmp_path, "tb")
    run = copy_run(inputs, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / "tb").iterdir()}
    read_only(run / "tb")

    def intact() -> None:
        assert {p.name: p.read_bytes() for p in (run / "tb").iterdir()} == before

    return Case("ct-train", [*MORE, f"hydra.run.dir={run}"], [f"could not write {run / 'tb'}", "(Permission denied"],
                intact, [run / "tb"], unprivileged=True)


def train_samples(fault, inputs, tmp_path) -> Case:
    run = tmp_path / "run"
    run.mkdir()
    args = [*SMOKE, "trainer.sample_tokens=8", f"hydra.run.dir={run}"]
    if fault == "file":
        (run / "samples").write_text("not a folder")
        return Case("ct-train", args, [f"{run / 'samples'} is a file, not a folder"], last_at(run, 12), [run])
    read_only(run / "samples")
    return Case("ct-train", args, [f"could not write {run / 'samples' / 'step_00000012'}", "(Permission denied"],
                last_at(run, 12), [run / "samples"], unprivileged=True)


def prepare(corpus: Callable[[Path], list[str]]):
    def case(fault, inputs, tmp_path) -> Case:
        cache = tmp_path / "cache"
        recipe = corpus(tmp_path / "corpus") + [f"data.cache_dir={cache}"]
        if fault == "file":
            cache.write_text("not a folder")
            return Case("ct-prepare", recipe, [f"{cache} is a file, not a folder", "data.cache_dir"],
                        unchanged(cache, b"not a folder"))
        if fault == "permission":
            read_only(cache)
            return Case("ct-prepare", recipe, [f"could not prepare data in the cache {cache}", "(Permission denied",
                                               "data.cache_dir"], empty(cache), [cache], unprivileged=True)

        def intact() -> None:
            assert not list(cache.glob(f"*/*/{MANIFEST}")), "a store was left"
            assert not [p for p in cache.rglob(".*") if p.is_dir()], "a temporary store was left"

        return Case("ct-prepare", recipe, ["train.bin (File too large", "no prepared data was left in the cache"],
                    intact, limit=1000)
    return case


def sample_audio(fault, inputs, tmp_path) -> Case:
    folder = tmp_path / "out"
    out, before = earlier(inputs, "a.wav", folder)
    args = [str(inputs["audio"]), "--seconds", "0.2", "--seed", "2", "--force", "--out", str(out)]
    if fault == "file":
        (tmp_path / "plain").write_text("x")
        args[-1] = str(tmp_path / "plain" / "a.wav")
        return Case("ct-sample", args, [f"--out={tmp_path / 'plain' / 'a.wav'}", "is a file, not a folder"])
    check = unchanged(out, before, lambda p: sf.read(str(p)))
    if fault == "permission":
        read_only(folder)
        return Case("ct-sample", args, [f"--out={out}", "(Permission denied"], check, [folder], unprivileged=True)
    return Case("ct-sample", args, [f"could not write {out} (File too large", "the earlier file there is unchanged"],
                check, [folder], limit=1500)


def sample_spectrogram(fault, inputs, tmp_path) -> Case:
    folder = tmp_path / "out"
    earlier(inputs, "a.wav", folder)
    png, before = earlier(inputs, "a.png", folder)
    args = [str(inputs["audio"]), "--seconds", "0.05", "--seed", "2", "--force", "--out", str(folder / "a.wav")]
    if fault == "file":
        png.unlink()
        png.mkdir()
        return Case("ct-sample", args, [f"--out={png} is a folder"])
    check = unchanged(png, before)
    if fault == "permission":
        png.chmod(0o444)
        read_only(folder)
        return Case("ct-sample", args, ["(Permission denied"], check, [folder], unprivileged=True)

    def intact() -> None:
        check()
        assert sf.info(str(folder / "a.wav")).frames == 400  # the WAV before it is whole

    return Case("ct-sample", args, [f"could not write {png} (File too large", "the earlier file there is unchanged"],
                intact, [folder], limit=4000)


def sample_text(fault, inputs, tmp_path) -> Case:
    folder = tmp_path / "out"
    out, before = earlier(inputs, "t.txt", folder)
    args = [str(inputs["text"]), "--tokens", "100", "--seed", "2", "--force", "--out", str(out)]
    if fault == "file":
        (tmp_path / "plain").write_text("x")
        args[-1] = str(tmp_path / "plain" / "t.txt")
        return Case("ct-sample", args, [f"--out={tmp_path / 'plain' / 't.txt'}", "is a file, not a folder"])
    if fault == "permission":
        read_only(folder)
        return Case("ct-sample", args, [f"--out={out}", "(Permission denied"], unchanged(out, before), [folder],
                    unprivileged=True)
    return Case("ct-sample", args, [f"could not write {out} (File too large", "the earlier file there is unchanged"],
                unchanged(out, before), [folder], limit=64)


def export(fault, inputs, tmp_path) -> Case:
    folder = tmp_path / "out"
    out, before = earlier(inputs, "m.safetensors", folder)
    args = [str(inputs["smoke"] / "checkpoints" / "last.pt"), str(out), "--force"]
    if fault == "file":
        (tmp_path / "plain").write_text("x")
        args[1] = str(tmp_path / "plain" / "m.safetensors")
        return Case("ct-export", args, [f"OUT={tmp_path / 'plain' / 'm.safetensors'}", "is a file, not a folder"])
    check = unchanged(out, before, lambda p: load_file(p))
    if fault == "permission":
        read_only(folder)
        return Case("ct-export", args, [f"OUT={out}", "(Permission denied"], check, [folder], unprivileged=True)
    return Case("ct-export", args, [f"could not write {out} (File too large", "the earlier file there is unchanged"],
                check, [folder], limit=len(before) // 2)


def eval_report(attention: bool):
    def case(fault, inputs, tmp_path) -> Case:
        folder = tmp_path / "run" / "checkpoints"
        folder.mkdir(parents=True)
        checkpoint = Path(shutil.copyfile(inputs["smoke"] / "checkpoints" / "last.pt", folder / "last.pt"))
        args = [str(checkpoint), "split=valid"] + (["--attention-report"] if attention else [])
        report = folder / ("attention_valid.png" if attention else "eval_valid.json")
        if fault == "file":
            report.mkdir()
            return Case("ct-eval", args, [f"could not write {report} (Is a directory", "is a folder"],
                        still_a_folder(report), [folder])
        report.write_text('{"earlier": "report"}')
        check = unchanged(report, report.read_bytes())
        if fault == "permission":
            read_only(folder)
            first = folder / ("attention_valid.json" if attention else "eval_valid.json")
            return Case("ct-eval", args, [f"could not write {first} (Permission denied"], check, [folder],
                        unprivileged=True)
        # The attention JSON (2.5 kB) and the report fit, the figure (about 50 kB) does not.
        return Case("ct-eval", args, [f"could not write {report} (File too large", "unchanged"], check, [folder],
                    limit=20_000 if attention else 200)
    return case


COMMANDS = {
    "ct-train checkpoint": train_checkpoint,
    "ct-train metrics.jsonl": train_metrics,
    "ct-train TensorBoard": train_tensorboard,
    "ct-train samples": train_samples,
    "ct-prepare audio": prepare(audio_corpus),
    "ct-prepare text": prepare(text_corpus),
    "ct-sample WAV": sample_audio,
    "ct-sample spectrogram": sample_spectrogram,
    "ct-sample text": sample_text,
    "ct-export": export,
    "ct-eval report": eval_report(attention=False),
    "ct-eval attention report": eval_report(attention=True),
}
#: (command, fault) pairs that cannot happen: the file is written after a far larger one
NOT_APPLICABLE = {("ct-train TensorBoard", "too large"), ("ct-train samples", "too large")}
CASES = [(c, f) for c in COMMANDS for f in ("too large", "permission", "file") if (c, f) not in NOT_APPLICABLE]


@pytest.mark.parametrize("command, fault", CASES, ids=[f"{c}-{f}" for c, f in CASES])
def test_a_real_fault_is_one_line_and_loses_nothing(inputs, tmp_path, command, fault):
    case = COMMANDS[command](fault, inputs, tmp_path)
    proc = run_case(case, cwd=tmp_path)
    line = assert_ends_in_one_line_error(proc, case.prog, *case.needles)
    assert "inline_container" not in line and "System error" not in line, line  # the library's words
    for folder in case.watch:
        assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".ct-write-probe" in p.name] == []
    case.intact()


def test_a_read_only_cache_that_holds_the_store_is_used(tmp_path):
    cache = tmp_path / "cache"
    recipe = text_corpus(tmp_path / "corpus") + [f"data.cache_dir={cache}"]
    first = run_cli("ct-prepare", *recipe, cwd=tmp_path)
    for path in [cache, *cache.rglob("*")]:  # as a cache shared read-only by another user
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    again = run_unprivileged("ct-prepare", *recipe, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


def test_prepared_stores_are_readable_by_the_group_whatever_the_umask(tmp_path):
    cache = tmp_path / "cache"
    recipe = audio_corpus(tmp_path / "corpus") + [f"data.cache_dir={cache}"]
    proc = subprocess.run(script("ct-prepare") + recipe, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: os.umask(0o077))
    assert proc.returncode == 0, proc.stderr
    (manifest,) = cache.glob(f"*/*/{MANIFEST}")
    store = manifest.parent
    for path in [store.parent, store]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    assert {stat.S_IMODE(p.stat().st_mode) for p in store.iterdir()} == {0o644}


def test_a_wav_cut_off_by_the_limit_is_never_left_under_its_name(inputs, tmp_path):
    """Without a --force target: the WAV the fault interrupts leaves no file at all."""
    out = tmp_path / "new.wav"
    case = Case("ct-sample", [str(inputs["audio"]), "--seconds", "0.2", "--out", str(out)],
                [f"could not write {out} (File too large", "nothing was written there"], limit=1500)
    assert_ends_in_one_line_error(run_case(case, tmp_path), "ct-sample", *case.needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_metrics_rows_survive_a_failed_append_and_the_run_resumes(inputs, tmp_path):
    """After the metrics fault, the same command without the limit continues
    the run from its checkpoint and logs every later row once."""
    case = train_metrics("too large", inputs, tmp_path)
    assert run_case(case, tmp_path).returncode == 2
    run_cli("ct-train", *case.args, cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["step"] > 12 and r["split"] == "train"] == [15, 18]
