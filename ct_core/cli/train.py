"""``ct-train``: train a Compressive Transformer from a Hydra recipe.

With no arguments it runs the speech demo (``experiment=audio/demo``) on the
sample shipped inside the package. Any recipe value can be overridden on the
command line in Hydra syntax::

    ct-train experiment=text/shakespeare_cpu trainer.steps=500
    ct-train experiment=audio/speech_ct data.root=/data/LibriSpeech hydra.run.dir=runs/speech
    ct-train experiment=audio/speech_ct hydra.run.dir=runs/speech resume=auto
    torchrun --nproc_per_node 8 -m ct_core.cli.train experiment=audio/speech_ct hydra.run.dir=runs/speech
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from ct_core.cli.common import compose_recipe, json_line, recipes_dir, user_errors
from ct_core.cli.run_dir import RUN_DIR_KEY, claim_run_dir, given_run_dir, planned_run_dir
from ct_core.errors import UserError
from ct_core.train.stop_requests import TrainingStopped

PROG = "ct-train"
#: Flags the pre-run checks understand; any other flag (--cfg, -m, --help)
#: goes to Hydra unchecked.
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def train_from_config(raw: dict[str, Any], run_dir: Path) -> dict[str, float]:
    """Prepare data, build everything, resume if asked, train, write samples."""
    from ct_core.train.attention_backend import refuse_flex_on_cpu
    from ct_core.train.checkpoint import load_checkpoint
    from ct_core.train.distributed import init_distributed, run_on_local_leader, shutdown
    from ct_core.errors import CheckpointError
    from ct_core.cli.run_setup import build_run, require_split
    from ct_core.train.trainer import Trainer

    from ct_core.train.runtime import device_kind

    ctx = init_distributed(device_kind(str((raw.get("trainer") or {}).get("device", "auto"))))
    try:
        cfg, frontend = build_run(raw)
        refuse_flex_on_cpu(cfg.trainer.attention_backend, cfg.trainer.device)
        claim = claim_run_dir(run_dir, cfg)  # the checkpoint to resume is checked against the recipe here
        # Local rank 0 of each node prepares (and caches) the data, the
        # node's other ranks wait for it as long as it takes, then find it ready.
        run_on_local_leader(ctx, lambda: frontend.prepare(progress=True))
        require_split(frontend, "train", "")
        require_split(frontend, "valid", "ct-train evaluates on it: ")
        trainer = Trainer(cfg, frontend, run_dir, ctx, run_id=claim.run_id)
        if cfg.resume:
            if claim.source is None:
                trainer.logger.message(f"resume=auto: no checkpoint in {trainer.checkpoints.dir} yet, starting fresh")
                trainer.logger.truncate_after(0)  # rows of a run killed before its first checkpoint
            else:
                payload = load_checkpoint(claim.source, for_resume=True, mmap=True)  # tensors mapped, read when used
                trainer.resume(claim.source, payload)
        if trainer.step >= cfg.trainer.steps:
            raise CheckpointError(
                f"the checkpoint is already at step {trainer.step} >= trainer.steps={cfg.trainer.steps}; "
                "raise trainer.steps to train further"
            )
        metrics = trainer.fit()
        if ctx.is_main:
            _report(trainer, metrics, run_dir)
        return metrics
    finally:
        shutdown(ctx)


def _report(trainer, metrics: dict[str, float], run_dir: Path) -> None:
    """Write final samples and tell the user where everything is."""
    ckpt = trainer.checkpoints.last_path
    lines = [f"checkpoint: {ckpt}"]
    n = trainer.cfg.trainer.sample_tokens
    if n > 0:
        tokens = trainer.sample(n)[:, 1:]  # [sample_batch, n]: the start token is not part of the sample
        paths = trainer.frontend.decode(tokens, run_dir / "samples" / f"step_{trainer.step:08d}", prompt_len=0)
        lines += [f"sample: {p}" for p in paths]
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    lines.append(f"valid: {json_line(shown)}")
    lines.append(f"next: ct-sample {ckpt}")  # writes a new samples/sample_<time> in this run
    lines.append(f"      ct-eval {ckpt} split=test")
    print("\n".join(lines), flush=True)


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a run
    creates there), or None when ``path`` exists."""
    path = Path(os.path.abspath(path))
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_unused_run_dir(run_dir: Path, created: Path | None) -> None:
    """After a run failed before its first checkpoint or logged step, remove
    the folders it created (``.hydra/``, ``train.log``, the lock), so a
    mistake leaves nothing behind. A folder that existed before is kept."""
    from ct_core.cli.run_dir import holds_run, is_main_process

    if created is None or not is_main_process() or holds_run(run_dir):
        return
    logging.shutdown()  # train.log is open in Hydra's file handler
    shutil.rmtree(created, ignore_errors=True)


def _hydra_entry(created: Path | None = None) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path=str(recipes_dir()), config_name="config")
    def run(cfg) -> None:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        with user_errors(PROG):
            try:
                train_from_config(raw, run_dir)
            except UserError:
                remove_unused_run_dir(run_dir, created)
                raise
            except TrainingStopped as stopped:
                print(f"{PROG}: {stopped}\ncontinue with: {continue_command(run_dir)}", file=sys.stderr, flush=True)
                sys.exit(stopped.exit_code)

    run()


def continue_command(run_dir: Path) -> str:
    """This command line, made to resume in ``run_dir``."""
    kept = [a for a in sys.argv[1:] if a.partition("=")[0].lstrip("+") not in ("resume", RUN_DIR_KEY)]
    return shlex.join([PROG, *kept, f"{RUN_DIR_KEY}={run_dir}", "resume=auto"])


def split_command_line(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """``(overrides, --config-dir, other flags present)``."""
    overrides, config_dir, other = [], None, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in CONFIG_DIR_FLAGS:
            config_dir = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
            i += 1 if eq else 2
            continue
        if arg.startswith("-"):
            other = True
        else:
            overrides.append(arg)
        i += 1
    return overrides, config_dir, other


def check_before_hydra(overrides: list[str], config_dir: str | None) -> tuple[Path, Path | None]:
    """Everything that can fail before Hydra writes ``.hydra/`` into the run
    directory: the recipe and every option, then the directory itself
    (writable, not in use, not an earlier run unless resumed or
    overwritten) and the checkpoint to resume (fits the recipe, belongs
    to the directory's run). Returns the run directory and its
    :func:`first_missing` folder before the checks created it."""
    from ct_core.cli.run_setup import build_run
    from ct_core.train.attention_backend import refuse_flex_on_cpu

    # One line for a mistyped key, not Hydra's multi-line report.
    raw = compose_recipe(overrides, PROG, config_dir)
    cfg, _ = build_run(raw)
    refuse_flex_on_cpu(cfg.trainer.attention_backend, cfg.trainer.device)
    run_dir = planned_run_dir(overrides, config_dir)
    created = first_missing(run_dir)
    claim_run_dir(run_dir, cfg)
    return run_dir, created


def main() -> None:
    overrides, config_dir, other_flags = split_command_line(sys.argv[1:])
    created = None
    if not other_flags:
        with user_errors(PROG):
            run_dir, created = check_before_hydra(overrides, config_dir)
        if given_run_dir(overrides) is None:
            # Hydra must use the directory that was checked, not a new time stamp.
            sys.argv.append(f"{RUN_DIR_KEY}='{run_dir}'")
    _hydra_entry(created)


if __name__ == "__main__":
    main()
