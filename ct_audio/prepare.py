"""Preparation: a corpus -> μ-law token shards on disk, one document per utterance.

The store lives at ``<cache_dir>/audio/<content_hash>/``. The hash covers
every setting that changes the tokens and the corpus listing (relative
paths, sizes and modification times of the audio and metadata files), all
of which is known without opening a single audio file. So an unchanged
corpus with unchanged settings is a cache hit that reads no audio, while an
edited, added or removed file, or a new sample rate, prepares a new store.

``manifest.json`` records what was prepared from what: the settings, the
split rule, every utterance (split, source path, speaker, durations) in
document order, per-split counts, and every skipped file with its reason.

Example::

    plan = plan_preparation(AudioConfig(corpus="fsdd", root="/data/fsdd", sample_rate=8000))
    path = prepare_store(plan)          # TokenStore(path).documents("train")
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ct_audio.audio_io import UnusableAudio
from ct_audio.config import AudioConfig
from ct_audio.corpora import Listing, Utterance, list_corpus
from ct_audio.mulaw import mulaw_encode
from ct_audio.splits import assign_splits, cap_files
from ct_core.errors import DataError
from ct_core.data.frontend import SPLITS
from ct_core.data.split_check import check_splits
from ct_core.data.token_store import TokenStore, TokenStoreWriter, content_hash, store_lock

log = logging.getLogger(__name__)

#: Bumped whenever preparation changes the tokens it writes for the same input.
FORMAT_VERSION = 1


@dataclasses.dataclass
class Plan:
    """What :func:`prepare_store` will write, and where."""

    cfg: AudioConfig
    listing: Listing
    splits: dict[str, list[Utterance]]
    rule: str
    hash: str
    path: Path


def _file_stamps(listing: Listing) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file the listing depends on."""
    stamps = []
    for path in listing.files:
        st = path.stat()
        stamps.append((path.relative_to(listing.root).as_posix(), st.st_size, st.st_mtime_ns))
    return stamps


def plan_preparation(cfg: AudioConfig) -> Plan:
    """List the corpus, split it and locate its store (no audio is read)."""
    listing = list_corpus(cfg.corpus, cfg.root)
    splits, rule = assign_splits(listing.utterances, cfg.valid_fraction, cfg.test_fraction, cfg.seed,
                                 source=f"data.root={listing.root}")
    splits = cap_files(splits, cfg.max_files, cfg.seed)
    key = content_hash({
        "format": FORMAT_VERSION,
        "settings": cfg.token_settings(),
        "root": str(listing.root),
        "files": _file_stamps(listing),
    })
    return Plan(cfg, listing, splits, rule, key, cfg.cache_root() / key)


def prepare_store(plan: Plan, progress: bool = True) -> Path:
    """Write the store of ``plan`` unless it already exists; returns its path.

    Files that cannot be used are skipped and listed in the manifest; the
    run goes on. If no file at all is usable, :class:`DataError`.
    """
    with store_lock(plan.path):  # another process may be preparing the same store
        if TokenStore.exists(plan.path):
            log.info("audio: cache hit, using prepared data at %s", plan.path)
            return plan.path
        _write_store(plan, progress)
    return plan.path


def _write_store(plan: Plan, progress: bool) -> None:
    """Read, preprocess and μ-law encode every planned file into the store."""
    cfg, root = plan.cfg, plan.listing.root
    pre = cfg.preprocessor()
    skipped = [{"path": p, "reason": r} for p, r in plan.listing.skipped]
    sources: list[dict[str, Any]] = []
    total = sum(len(v) for v in plan.splits.values())
    bar = tqdm(total=total, desc=f"audio: preparing {cfg.corpus}", unit="file",
               disable=None if progress else True)
    with TokenStoreWriter(plan.path, dtype=np.uint8) as writer:
        for split in SPLITS:
            for utt in plan.splits[split]:
                bar.update(1)
                rel = utt.path.relative_to(root).as_posix()
                try:
                    clip = pre.load(utt.path)
                except UnusableAudio as e:
                    skipped.append({"path": rel, "reason": e.reason})
                    continue
                codes = mulaw_encode(clip.wave, cfg.mu).astype(np.uint8)  # [T]
                writer.add(split, codes)
                sources.append({
                    "split": split, "id": utt.id, "path": rel, "speaker": utt.speaker,
                    "text": utt.text, "source_sample_rate": clip.source_rate,
                    "source_seconds": clip.source_frames / clip.source_rate,
                    "samples": int(codes.size), "seconds": codes.size / cfg.sample_rate,
                })
        bar.close()
        if not sources:
            first = skipped[0]
            raise DataError(f"{root}: none of its {len(skipped)} audio files is usable "
                            f"(e.g. {first['path']}: {first['reason']})")
        planned = {split: [u.path.relative_to(root).as_posix() for u in plan.splits[split]] for split in SPLITS}
        kept = {split: [(r["path"], r["samples"]) for r in sources if r["split"] == split] for split in SPLITS}
        check_splits(f"data.root={root}", planned, kept, {s["path"]: s["reason"] for s in skipped})
        writer.finish(_manifest(plan, sources, skipped), splits=SPLITS)
    if skipped:
        log.warning("audio: skipped %d file(s); reasons in %s", len(skipped), plan.path / "manifest.json")


def _manifest(plan: Plan, sources: list[dict[str, Any]], skipped: list[dict[str, str]]) -> dict[str, Any]:
    cfg = plan.cfg
    counts = {}
    for split in SPLITS:
        rows = [s for s in sources if s["split"] == split]
        counts[split] = {
            "utterances": len(rows),
            "seconds": round(sum(r["seconds"] for r in rows), 3),
            "speakers": len({r["speaker"] for r in rows if r["speaker"] is not None}),
        }
    return {
        "frontend": "audio",
        "format": FORMAT_VERSION,
        "hash": plan.hash,
        "corpus": cfg.corpus,
        "root": str(plan.listing.root),
        "sample_rate": cfg.sample_rate,
        "mu_law": {"mu": cfg.mu, "classes": cfg.mu + 1,
                   "implementation": "torchaudio.functional.mu_law_encoding"},
        "resampler": "librosa.resample(res_type='soxr_hq')",
        "normalize": {"mode": cfg.normalize, "peak_db": cfg.peak_db, "rms_db": cfg.rms_db},
        "trim": {"enabled": cfg.trim_silence, "top_db": cfg.top_db},
        "silence_db": cfg.silence_db,
        "split_rule": plan.rule,
        "settings": cfg.token_settings(),
        "counts": counts,
        "seconds": round(sum(s["seconds"] for s in sources), 3),
        "sources": sources,
        "skipped": skipped,
    }
