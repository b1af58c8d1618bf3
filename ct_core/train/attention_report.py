"""Attention by distance (the paper's Figure 2): where does the attention go?

Over a whole split, every segment's queries spread their attention over the
keys ``[cmem; mem; segment]``. Each region is cut into ``n_buckets`` equal
parts, oldest first, and the mass each part receives (averaged over heads
and queries, so a segment's buckets sum to 1) is averaged over segments, per
layer and over layers. Only segments whose memories are full and whose
tokens are all real count, so every bucket covers the same keys each time.
A rise at the oldest compressed buckets means the model reaches back
through compressed memory.

Example::

    report = attention_by_distance(model, docs, batch_size=8, mem_len=128, cmem_len=64, device=cpu)
    report["mean_by_region"]          # {"cmem": 0.21, "mem": 0.33, "segment": 0.46}
    write_attention_figure(report, "attention_valid.png", title="...")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ct_core.atomic_write import atomic_path
from ct_core.data.stream_batcher import IGNORE_INDEX, StreamBatcher
from ct_core.model.lm import CompressiveTransformerLM
from ct_core.train.runtime import autocast_context

REGIONS = ("cmem", "mem", "segment")


def bucket_bounds(n_keys: int, n_buckets: int) -> list[tuple[int, int]]:
    """``n_buckets`` contiguous ``[start, end)`` ranges covering ``n_keys`` keys
    (fewer when there are fewer keys than buckets)."""
    n = min(n_buckets, n_keys)
    edges = np.linspace(0, n_keys, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@torch.no_grad()
def attention_by_distance(
    model: CompressiveTransformerLM,
    documents: Sequence[np.ndarray],
    batch_size: int,
    mem_len: int,
    cmem_len: int,
    device: torch.device,
    precision: str = "auto",
    n_buckets: int = 6,
) -> dict[str, Any]:
    """Attention mass per bucket of ``[cmem; mem; segment]`` over a split.

    Returns ``buckets`` (names, oldest first), ``per_layer`` means ``[L][n]``,
    ``mean`` over layers ``[n]`` with its standard error over segments
    ``stderr`` ``[n]``, ``mean_by_region`` and the number of ``segments`` counted.
    """
    was_training = model.training
    model.eval()
    seq_len, n_heads = model.cfg.seq_len, model.cfg.n_heads
    sizes = {"cmem": cmem_len, "mem": mem_len, "segment": seq_len}
    names, spans, start = [], [], 0
    for region in REGIONS:
        for i, (a, b) in enumerate(bucket_bounds(sizes[region], n_buckets)):
            names.append(f"{region} {i + 1}")
            spans.append((start + a, start + b))
        start += sizes[region]
    batcher = StreamBatcher(documents, batch_size=batch_size, seq_len=seq_len, mode="eval", seed=0, shuffle=False)
    memory = model.empty_memory(batch_size, mem_len, cmem_len, device=device)
    samples: list[np.ndarray] = []  # [rows, L, n] per counted batch
    try:
        for batch in batcher:
            batch = batch.to(device)
            full_memory = torch.cat([memory.cmem_mask, memory.mem_mask], dim=1).all(dim=1) & ~batch.reset  # [B]
            with autocast_context(device, precision):
                out = model(batch.x, memory, batch.reset, return_usage=True)
            memory = out.memory
            rows = full_memory & (batch.y != IGNORE_INDEX).all(dim=1)  # [B]
            if not rows.any():
                continue
            usage = torch.stack(out.usage, dim=1)[rows].float() / (n_heads * seq_len)  # [b, L, K]
            buckets = torch.stack([usage[..., a:b].sum(-1) for a, b in spans], dim=-1)  # [b, L, n]
            samples.append(buckets.cpu().numpy())
    finally:
        model.train(was_training)
    if not samples:
        return {"buckets": names, "segments": 0}
    per_segment = np.concatenate(samples)  # [S, L, n]
    layer_mean = per_segment.mean(axis=1)  # [S, n]: averaged over layers
    mean = layer_mean.mean(axis=0)
    stderr = layer_mean.std(axis=0, ddof=1) / np.sqrt(len(layer_mean)) if len(layer_mean) > 1 else 0 * mean
    by_region = {r: float(sum(m for m, name in zip(mean, names) if name.startswith(r + " "))) for r in REGIONS}
    return {
        "buckets": names,
        "segments": int(len(per_segment)),
        "per_layer": per_segment.mean(axis=0).tolist(),
        "mean": mean.tolist(),
        "stderr": stderr.tolist(),
        "mean_by_region": {r: v for r, v in by_region.items() if sizes[r] > 0},
        "slots": sizes,
    }


def write_attention_figure(report: dict[str, Any], path, title: str) -> None:
    """A bar chart of ``report``: one bar per bucket (oldest left), coloured
    by region, with standard-error bars, and each layer as a thin line;
    written atomically (a failed write is one line and leaves ``path`` as it was)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, mean, err = report["buckets"], np.asarray(report["mean"]), np.asarray(report["stderr"])
    colours = {"cmem": "tab:red", "mem": "tab:orange", "segment": "tab:blue"}
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 3.6))
    ax.bar(x, mean, yerr=err, capsize=2, color=[colours[n.split()[0]] for n in names])
    for layer in report["per_layer"]:
        ax.plot(x, layer, color="black", linewidth=0.6, alpha=0.35)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("attention mass")
    ax.set_title(title, fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for r, c in colours.items() if r in report["mean_by_region"]]
    ax.legend(handles, [r for r in colours if r in report["mean_by_region"]], fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
