"""``ct-eval``: evaluate a checkpoint on a complete split.

Prints the front end's metrics one per line, then one JSON object as the
last line, and writes ``eval_<split>.json`` beside the checkpoint (atomically:
a write that fails is one line, exit 2, and leaves an earlier report whole)::

    ct-eval outputs/audio/demo/<time>/checkpoints/last.pt split=test
    ct-eval runs/enwik8_ct/checkpoints/last.pt split=test data.path=/data/enwik8.zip eval.cmem_len=3072

Overrides (``key=value``) may change ``split``, ``eval.*``,
``trainer.device``/``precision`` and those ``data.*`` options that leave the
data unchanged (each front end's ``Config.same_data_fields``: where the
corpus and the cache live on this machine); any other ``data`` option would
measure the model on other data than it was trained on, and is refused.
The report records the resolved ``data`` section it was measured with.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ct_core.atomic_write import write_text
from ct_core.cli.common import OneLineParser, json_line, user_errors
from ct_core.errors import ConfigError, DataError

PROG = "ct-eval"
EDITABLE = ("data.", "eval.", "trainer.device", "trainer.precision")


def apply_overrides(config: dict, overrides: list[str]) -> tuple[dict, str]:
    """Apply ``key=value`` overrides to a checkpoint's config; returns it and the split."""
    from omegaconf import OmegaConf

    split = "valid"
    dotlist = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "split":
            split = value
        elif key == "data.frontend" and value != config["data"].get("frontend"):
            raise ConfigError(f"data.frontend={value}: this model was trained on data.frontend="
                              f"{config['data'].get('frontend')} and reads only that kind of data; evaluate a "
                              f"{value} checkpoint instead")
        elif any(key == p or key.startswith(p) for p in EDITABLE):
            dotlist.append(item)
        else:
            raise ConfigError(f"{key} cannot be changed at evaluation; allowed: split, data.*, eval.*, trainer.device, trainer.precision")
    if split not in ("train", "valid", "test"):
        raise ConfigError(f"split={split!r} is unknown; choose valid or test (or train)")
    merged = OmegaConf.merge(OmegaConf.create(config), OmegaConf.from_dotlist(dotlist))
    return OmegaConf.to_container(merged, resolve=True), split


def check_same_data(saved: dict, current: dict) -> None:
    """A one-line error for a ``data`` override that changes what is
    measured, naming the data options that may change."""
    from ct_core.data.frontend import changed_data_options, frontend_class, option_value

    changes = changed_data_options(saved, current)
    if changes:
        name, before, after = changes[0]
        same = frontend_class(saved["frontend"]).Config.same_data_fields
        allowed = ", ".join(f"data.{f}" for f in same) or "none"
        raise ConfigError(
            f"data.{name} changed {option_value(before)} → {option_value(after)}: {PROG} measures on the data "
            f"the checkpoint was trained on; the data options it may change (where the data lives): {allowed}"
        )


def run(checkpoint: Path, overrides: list[str], attention_report: bool = False) -> dict:
    import torch

    from ct_core.train.evaluator import evaluate
    from ct_core.cli.run_setup import require_split
    from ct_core.train.model_loading import build_model, build_run, read_model_file
    from ct_core.train.runtime import resolve_device

    payload = read_model_file(checkpoint)
    config, split = apply_overrides(payload["config"], overrides)
    check_same_data(payload["config"]["data"], config["data"])
    cfg, frontend = build_run(config, payload["frontend"])
    device = resolve_device(cfg.trainer.device)
    model = build_model(checkpoint, payload, cfg).to(device)
    frontend.prepare(progress=sys.stderr.isatty())
    docs = require_split(frontend, split, "evaluate another split (split=valid), or ")
    with torch.no_grad():
        result = evaluate(model, docs, cfg.eval.batch_size, cfg.eval_mem_len, cfg.eval_cmem_len, device,
                          cfg.trainer.precision)
    metrics = frontend.metrics(result.nll_sum, result.n_tokens, split)
    probes = frontend.probes(split)
    if probes is not None:
        metrics.update(probe_report(model, docs, probes, cfg, device))
    if attention_report or cfg.eval.attention_report:
        metrics["attention_report"] = write_attention_report(model, docs, cfg, device, checkpoint, split)
    report = {"checkpoint": str(checkpoint), "step": payload["step"], "split": split, "n_tokens": result.n_tokens,
              "mem_len": cfg.eval_mem_len, "cmem_len": cfg.eval_cmem_len,
              "data": {"frontend": frontend.name, **dataclasses.asdict(frontend.cfg)}, **metrics}
    for key, value in metrics.items():
        if isinstance(value, dict):
            continue  # shown in the JSON line
        print(f"{key:>20}  {value:.6g}" if isinstance(value, float) else f"{key:>20}  {value}")
    line = json_line(report)
    print(line, flush=True)
    out = checkpoint.parent / f"eval_{split}.json"
    # Atomic: a failed write leaves an earlier report whole; the result is printed either way.
    intact = "the earlier report there is unchanged" if out.is_file() else "no report was written there"
    write_text(out, json.dumps(json.loads(line), indent=2), intact=f"{intact}; the JSON line above is the result")
    return report


def probe_report(model, docs, probes, cfg, device) -> dict:
    """Exact-match accuracy at the front end's probe positions, overall and by
    distance in buckets of ``seq_len`` tokens (the synthetic recall task)."""
    from ct_core.data.recall import accuracy_by_distance
    from ct_core.train.evaluator import probe_correctness

    correct, distances = probe_correctness(model, docs, probes, cfg.eval.batch_size, cfg.eval_mem_len,
                                           cfg.eval_cmem_len, device, cfg.trainer.precision)
    if correct.size == 0:
        return {"probes": 0}
    width = cfg.model.seq_len
    top = -(-int(distances.max()) // width) * width
    return {"probes": int(correct.size), "probe_accuracy": float(correct.mean()),
            "probe_accuracy_by_distance": accuracy_by_distance(correct, distances, width, top)}


def write_attention_report(model, docs, cfg, device, checkpoint: Path, split: str) -> dict:
    """Attention mass by distance over the split: ``attention_<split>.json`` and
    ``.png`` beside the checkpoint; returns their paths and the region totals."""
    from ct_core.train.attention_report import attention_by_distance, write_attention_figure

    report = attention_by_distance(model, docs, cfg.eval.batch_size, cfg.eval_mem_len, cfg.eval_cmem_len, device,
                                   cfg.trainer.precision)
    if not report["segments"]:
        raise DataError(f"split {split!r}: no segment with full memories to report attention on; "
                        "its documents are shorter than the memories")
    stem = checkpoint.parent / f"attention_{split}"
    json_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".png")
    write_text(json_path, json.dumps(report, indent=2))
    slots = report["slots"]
    write_attention_figure(report, png_path, f"{checkpoint.name}, split {split}: {slots['cmem']} compressed, "
                                             f"{slots['mem']} memory, {slots['segment']} segment slots per layer")
    return {"json": str(json_path), "png": str(png_path), "segments": report["segments"],
            "mean_by_region": report["mean_by_region"]}


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(
        prog=PROG,
        description="Evaluate a checkpoint on a complete split (every token once, memory carried "
        "within documents). The last printed line is one JSON object.",
        epilog="example: ct-eval outputs/audio/demo/<time>/checkpoints/last.pt split=test",
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="a .pt file written by ct-train, or its ct-export .safetensors")
    # A default makes the overrides optional in the usage line and in errors.
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="split=valid|test, data.KEY=VALUE, eval.KEY=VALUE, trainer.device=cpu")
    parser.add_argument("--attention-report", action="store_true",
                        help="also write attention mass by distance (cmem, memory, segment buckets) as "
                        "attention_<split>.png and .json beside the checkpoint (same as eval.attention_report=true)")
    # Intermixed: --attention-report may come before, between or after the overrides.
    args = parser.parse_intermixed_args(argv)
    with user_errors(PROG):
        run(args.checkpoint, args.overrides, attention_report=args.attention_report)


if __name__ == "__main__":
    main()
