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

import json
import sys
from pathlib import Path
from typing import Any

from ct_core.cli.common import compose_recipe, recipes_dir, user_errors

PROG = "ct-train"


def train_from_config(raw: dict[str, Any], run_dir: Path) -> dict[str, float]:
    """Prepare data, build everything, resume if asked, train, write samples."""
    from ct_core.train.checkpoint import load_checkpoint
    from ct_core.train.distributed import init_distributed, run_on_local_leader, shutdown
    from ct_core.errors import CheckpointError
    from ct_core.cli.run_setup import build_run, check_compatible
    from ct_core.train.trainer import Trainer

    from ct_core.train.runtime import device_kind

    ctx = init_distributed(device_kind(str((raw.get("trainer") or {}).get("device", "auto"))))
    try:
        cfg, frontend = build_run(raw)
        # Local rank 0 of each node prepares (and caches) the data, the
        # node's other ranks wait for it as long as it takes, then find it ready.
        run_on_local_leader(ctx, lambda: frontend.prepare(progress=True))
        trainer = Trainer(cfg, frontend, run_dir, ctx)
        if cfg.resume:
            path = trainer.checkpoints.latest() if cfg.resume == "auto" else Path(cfg.resume)
            if path is None:
                trainer.logger.message(f"resume=auto: no checkpoint in {trainer.checkpoints.dir} yet, starting fresh")
            else:
                payload = load_checkpoint(path, for_resume=True, mmap=True)  # read once, mapped
                check_compatible(path, payload["config"], cfg.raw)
                trainer.resume(path, payload)
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
        tokens = trainer.sample(n)  # [sample_batch, 1 + n]
        paths = trainer.frontend.decode(tokens, run_dir / "samples" / f"step_{trainer.step:08d}", prompt_len=1)
        lines += [f"sample: {p}" for p in paths]
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    lines.append(f"valid: {json.dumps(shown)}")
    lines.append(f"next: ct-sample {ckpt} --out {run_dir / 'samples'}")
    lines.append(f"      ct-eval {ckpt} split=test")
    print("\n".join(lines), flush=True)


def _hydra_entry() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path=str(recipes_dir()), config_name="config")
    def run(cfg) -> None:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        with user_errors(PROG):
            train_from_config(raw, Path(HydraConfig.get().runtime.output_dir))

    run()


def main() -> None:
    argv = sys.argv[1:]
    if not any(a.startswith("-") for a in argv):
        # Validate overrides first so that a mistyped key is one line, not
        # Hydra's multi-line report.
        with user_errors(PROG):
            compose_recipe(argv, PROG)
    _hydra_entry()


if __name__ == "__main__":
    main()
