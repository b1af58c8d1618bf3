"""Tables and figures of the evidence study (:mod:`bench.evidence`).

Every number is the mean over seeds with the min and max beside it; nothing
is tuned for one side. :func:`write_report` writes ``<out>/report.md`` with
its figures and, when asked, replaces the generated blocks of
``docs/results.md`` (between ``<!-- evidence:NAME -->`` and
``<!-- /evidence:NAME -->``) and copies the figures to ``docs/figures/``.
"""

from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path
from typing import Any

from bench.report import device_name, git_commit

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "results.md"
FIGURES = REPO / "docs" / "figures"
#: How far back each recall model reaches (memory slots x tokens per slot).
RECALL_REACH = {"txl": 128, "ct": 64 + 4 * 64, "ct_mean_pool": 64 + 4 * 64}
LABELS = {"ct": "CT (conv + attention loss)", "ct_mean_pool": "CT (mean pool, no extra weights)",
          "txl": "Transformer-XL"}


def spread(values: list[float], digits: int = 3) -> str:
    """``mean (min–max)`` of ``values``."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def by_label(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["label"], []).append(run)
    return groups


def comparison_table(study, runs: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> str:
    """One row per label: the study's metric over seeds, time and parameters."""
    head = f"| model | seeds | {study.metric} | " + "".join(f"{k} | " for k in extra) + "train time (s) | parameters |"
    lines = [head, "|" + "---|" * (5 + len(extra))]
    for label, group in by_label(runs).items():
        values = [r["metrics"][study.metric] for r in group if study.metric in r["metrics"]]
        cells = [spread([r["metrics"][k] for r in group if k in r["metrics"]]) for k in extra]
        params = group[0]["train"]["parameters"]
        side = group[0]["train"]["compressor_parameters"]
        shown = f"{params:,}" + (f" ({side:,} in compressors)" if side else "")
        lines.append(f"| {LABELS.get(label, label)} | {len(group)} | {spread(values)} | "
                     + "".join(f"{c} | " for c in cells)
                     + f"{spread([r['train']['train_seconds'] for r in group], 0)} | {shown} |")
    return "\n".join(lines)


def verdict(study, runs: list[dict[str, Any]], a: str = "ct", b: str = "txl") -> str:
    """One sentence: does ``a`` beat ``b`` on every seed, on average, or not."""
    groups = by_label(runs)
    if a not in groups or b not in groups:
        return ""
    va = [r["metrics"][study.metric] for r in groups[a]]
    vb = [r["metrics"][study.metric] for r in groups[b]]
    sign = -1 if study.lower_is_better else 1
    mean_a, mean_b = sum(va) / len(va), sum(vb) / len(vb)
    better = sign * (mean_a - mean_b) > 0
    separated = (max(va) < min(vb)) if study.lower_is_better else (min(va) > max(vb))
    if better and separated:
        how = "beats Transformer-XL on every seed: its worst seed is better than Transformer-XL's best"
    elif better:
        how = "is better than Transformer-XL on average, but the seeds' ranges overlap"
    else:
        how = "does **not** beat Transformer-XL here"
    return (f"CT {how} ({study.metric} {mean_a:.4f} vs {mean_b:.4f}, difference "
            f"{mean_a - mean_b:+.4f}).")


def recall_block(study, runs: list[dict[str, Any]], figures: Path) -> str:
    groups = by_label(runs)
    buckets: list[str] = []
    for run in runs:
        for name in run["metrics"].get("probe_accuracy_by_distance", {}):
            if name not in buckets:
                buckets.append(name)
    buckets.sort(key=lambda b: int(re.findall(r"\d+", b)[0]))
    lines = ["| distance (tokens back) | " + " | ".join(LABELS.get(k, k) for k in groups) + " |",
             "|---|" + "---|" * len(groups)]
    for bucket in buckets:
        cells = []
        for group in groups.values():
            values = [r["metrics"]["probe_accuracy_by_distance"][bucket]["accuracy"] for r in group
                      if bucket in r["metrics"].get("probe_accuracy_by_distance", {})]
            cells.append(spread(values, 2))
        lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    figure = recall_figure(groups, buckets, figures / "recall_accuracy.png")
    return "\n\n".join([comparison_table(study, runs), verdict(study, runs), "Exact-match accuracy of the recalled "
                        "symbol by distance to its latest exposure (mean over seeds, min–max in brackets; chance "
                        "is 1/16 = 0.06):", "\n".join(lines), f"![recall accuracy by distance](figures/{figure.name})"])


def recall_figure(groups: dict[str, list[dict[str, Any]]], buckets: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    centres = []
    for b in buckets:
        numbers = [int(n) for n in re.findall(r"\d+", b)]
        centres.append(sum(numbers) / len(numbers) if len(numbers) == 2 else numbers[0] + 16)
    for label, group in groups.items():
        means, lows, highs = [], [], []
        for b in buckets:
            v = [r["metrics"]["probe_accuracy_by_distance"][b]["accuracy"] for r in group
                 if b in r["metrics"]["probe_accuracy_by_distance"]]
            means.append(sum(v) / len(v) if v else float("nan"))
            lows.append(min(v) if v else float("nan"))
            highs.append(max(v) if v else float("nan"))
        line, = ax.plot(centres, means, marker="o", label=LABELS.get(label, label))
        ax.fill_between(centres, lows, highs, alpha=0.2, color=line.get_color())
    for label, style in (("txl", ":"), ("ct", "--")):
        ax.axvline(RECALL_REACH[label], color="grey", linestyle=style)
        ax.text(RECALL_REACH[label], 0.5, f" {'TXL' if label == 'txl' else 'CT'} memory reach", color="grey",
                rotation=90, va="center")
    ax.axhline(1 / 16, color="black", linewidth=0.5)
    ax.set_xlabel("distance to the symbol's latest exposure (tokens)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attention_block(results: dict[str, Any], figures: Path) -> str:
    """The attention-by-distance figures of the runs that made one."""
    parts = []
    for name in ("speech", "attention"):
        for run in results.get(name, {}).get("runs", []):
            report = (run.get("eval") or {}).get("attention_report")
            if not report:
                continue
            png = Path(report["png"])
            target = figures / f"attention_{'shakespeare' if name == 'attention' else name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            layers = report.get("mean_by_region", {})
            shown = ", ".join(f"{region} {mass:.3f}" for region, mass in layers.items())
            title = "speech CT (LibriSpeech sample)" if name == "speech" else "tiny-shakespeare CT"
            parts.append(f"**{title}** — attention mass by region, averaged over layers: {shown}.\n\n"
                         f"![attention by distance, {title}](figures/{target.name})")
    return "\n\n".join(parts) or "No attention report was made in this study."


def race_block(race: dict[str, Any] | None) -> str:
    if race is None:
        return "Not run in this study."
    nano, cal = race["nanogpt"], race["calibration"]
    won = race["seconds"] <= nano["seconds_here"] and race["valid_nats"] < nano["valid_nats"]
    return "\n".join([
        "| command (2 CPU cores, whole command) | wall clock | validation loss |",
        "|---|---|---|",
        f"| `{race['command']}` | {race['seconds']:.0f} s | {race['valid_nats']:.3f} nats/char |",
        f"| nanoGPT `train_shakespeare_char.py` on CPU, 2,000 iterations | {nano['seconds_here']:.0f} s "
        f"(scaled; {nano['seconds']:.0f} s measured on 2 EPYC cores) | {nano['valid_nats']:.3f} nats/char |",
        "",
        f"nanoGPT was timed on 2 cores of an AMD EPYC. The scale comes from a command timed on both machines: "
        f"`{cal['command']}` took {cal['seconds_on_nanogpt_machine']:.0f} s there and {cal['seconds']:.0f} s "
        f"here (×{cal['scale']:.2f}; it reached {cal['valid_nats']:.3f} nats/char).",
        "",
        ("Within nanoGPT's wall clock and below its loss." if won else
         "**Not** both faster and lower than nanoGPT in this run."),
    ])


def commands_seconds(results: dict[str, Any], race: dict[str, Any] | None) -> float:
    """Wall clock of every command the study ran (each run once, however many
    studies share it), whether in this invocation or in one it resumed."""
    seen: dict[str, float] = {}
    for entry in results.values():
        for run in entry["runs"]:
            spent = run["train"]["train_seconds"] + (run["eval"] or {}).get("eval_seconds", 0.0)
            seen[run["run_dir"]] = max(seen.get(run["run_dir"], 0.0), spent)
    if race is not None:
        seen["race"] = race["seconds"] + race["calibration"]["seconds"]
    return sum(seen.values())


def environment(size: str, seconds: float) -> str:
    import torch

    return (f"Size `{size}`; commit `{git_commit()}`; torch {torch.__version__}; {device_name(torch.device('cpu'))}, "
            f"{torch.get_num_threads()} torch threads; {datetime.date.today().isoformat()}; "
            f"the study's commands ran {seconds / 60:.0f} min in all.")


def write_report(results: dict[str, Any], race: dict[str, Any] | None, size: str, out: Path,
                 write_docs: bool, partial: bool = False) -> Path:
    """Write ``<out>/report.md`` (and docs/results.md blocks); returns the report path.
    ``partial`` (some studies only): docs/results.md keeps every other block,
    and each block rewritten ends with the environment it ran in."""
    figures = out / "figures"
    blocks = {"environment": environment(size, commands_seconds(results, race)), "race": race_block(race),
              "attention": attention_block(results, figures)}
    for name, entry in results.items():
        study, runs = entry["study"], entry["runs"]
        if name == "recall":
            blocks[name] = recall_block(study, runs, figures)
        elif name == "speech":
            blocks[name] = "\n\n".join([comparison_table(study, runs, ("trigram_bits", "unigram_bits")),
                                        verdict(study, runs)])
        elif name == "wikitext":
            blocks[name] = "\n\n".join([comparison_table(study, runs, ("unigram_ppl",)), verdict(study, runs)])
        elif name == "ablation":
            blocks[name] = comparison_table(study, runs)
        elif name != "attention":
            blocks[name] = "\n\n".join([comparison_table(study, runs), verdict(study, runs)])
    report = out / "report.md"
    sections = [f"# Evidence study ({size})", blocks["environment"]]
    for name, entry in results.items():
        sections += [f"## {entry['study'].title}", entry["study"].note, blocks.get(name, "")]
    sections += ["## Wall clock against nanoGPT", blocks["race"]]
    report.write_text("\n\n".join(s for s in sections if s) + "\n")
    if write_docs:
        if partial:
            ran = [name for name in results if name in blocks] + (["race"] if race is not None else [])
            blocks = {name: f"{blocks[name]}\n\n{blocks['environment']}" for name in ran}
        replace_blocks(DOCS, blocks)
        FIGURES.mkdir(parents=True, exist_ok=True)
        for png in figures.glob("*.png"):
            shutil.copyfile(png, FIGURES / png.name)
    return report


def replace_blocks(path: Path, blocks: dict[str, str]) -> None:
    """Put each block between its markers in ``path``; other text stays."""
    text = path.read_text()
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- evidence:{name} -->\n)(?:.*?\n)?(<!-- /evidence:{name} -->)", re.S)
        text, n = pattern.subn(lambda m: m.group(1) + body + "\n" + m.group(2), text)
        if n == 0:
            raise SystemExit(f"{path}: no <!-- evidence:{name} --> block to fill; add the markers")
    path.write_text(text)
