"""Deterministic train/valid/test splits of a corpus listing.

The rule, in order of preference:

1. ``official``: every utterance carries its corpus's own split and all
   three splits are non-empty (FSDD; LibriSpeech with train, dev and test
   subsets present). Official LibriSpeech subsets are speaker-disjoint.
2. ``speaker-disjoint``: every utterance has a speaker and there are enough
   speakers for each requested split to get at least one; whole speakers are
   drawn for test, then valid, from a permutation seeded by ``seed``.
3. ``by-utterance``: utterances are drawn the same way (single-speaker
   corpora such as LJ Speech, plain folders).

A fraction is the share of speakers (rule 2) or utterances (rule 3), rounded,
and at least one when the fraction is positive; a corpus too small to give
every requested split a file and keep one for training is refused (one
line naming the options that fill each split). Within a split, utterances
are ordered by id, so documents come in a stable, readable order.

Example::

    splits, rule = assign_splits(listing.utterances, 0.05, 0.05, seed=0)
    splits["test"]     # [Utterance(...), ...]
"""

from __future__ import annotations

import numpy as np

from ct_audio.corpora import Utterance
from ct_core.data.frontend import SPLITS
from ct_core.errors import DataError


def _count(fraction: float, n: int) -> int:
    return 0 if fraction <= 0 else max(1, round(fraction * n))


def _draw(keys: list[str], valid_fraction: float, test_fraction: float,
          seed: int) -> dict[str, str] | None:
    """Key -> split for a seeded draw of whole keys; ``None`` when there are
    too few keys to leave at least one for training."""
    n_test, n_valid = _count(test_fraction, len(keys)), _count(valid_fraction, len(keys))
    if n_test + n_valid >= len(keys):
        return None
    order = np.random.default_rng(seed).permutation(len(keys))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[keys[i]] = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
    return split_of


def too_few_files(n: int, valid_fraction: float, test_fraction: float, source: str) -> DataError:
    """Why ``n`` files cannot be split as asked, naming the option behind
    each split's share."""
    n_valid, n_test = _count(valid_fraction, n), _count(test_fraction, n)
    needed = n_valid + n_test + 1
    # Leaving test empty is the fix that keeps training possible (ct-train needs valid).
    fix = ", or set data.test_fraction=0 to leave test empty" if n_test and n > n_valid else ""
    return DataError(
        f"{source}: {n} audio file{'s' if n != 1 else ''} cannot be split: data.valid_fraction={valid_fraction} "
        f"gives valid {n_valid}, data.test_fraction={test_fraction} gives test {n_test}, and train keeps the "
        f"rest, at least 1 ({needed} files in all); add files{fix}"
    )


def assign_splits(utterances: list[Utterance], valid_fraction: float, test_fraction: float,
                  seed: int, source: str = "the corpus") -> tuple[dict[str, list[Utterance]], str]:
    """Split ``utterances`` into :data:`~ct_core.data.frontend.SPLITS`; returns the
    splits and the name of the rule used. ``source`` names the corpus in
    the error for too few files (``data.root=...``)."""
    utterances = sorted(utterances, key=lambda u: u.id)
    official = {u.split for u in utterances}
    if None not in official and official >= set(SPLITS):
        rule, split_of = "official", {u.id: u.split for u in utterances}
    else:
        speakers = sorted({u.speaker for u in utterances if u.speaker is not None})
        by_speaker = None
        if all(u.speaker is not None for u in utterances):
            by_speaker = _draw(speakers, valid_fraction, test_fraction, seed)
        if by_speaker is not None:
            rule = "speaker-disjoint"
            split_of = {u.id: by_speaker[u.speaker] for u in utterances}
        else:
            rule = "by-utterance"
            split_of = _draw([u.id for u in utterances], valid_fraction, test_fraction, seed)
            if split_of is None:
                raise too_few_files(len(utterances), valid_fraction, test_fraction, source)
    splits: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for u in utterances:
        splits[split_of[u.id]].append(u)
    return splits, rule


def cap_files(splits: dict[str, list[Utterance]], max_files: int | None,
              seed: int) -> dict[str, list[Utterance]]:
    """At most ``max_files`` utterances in all, drawn per split in proportion
    to its size (seeded), keeping at least one in each non-empty evaluation
    split, so a quick run still has valid and test data. The split of an
    utterance never depends on the cap."""
    total = sum(len(v) for v in splits.values())
    if max_files is None or max_files >= total:
        return splits
    quota = {s: round(max_files * len(splits[s]) / total) for s in SPLITS}
    for s in ("valid", "test"):
        if splits[s] and quota[s] == 0:
            quota[s] = 1
    quota["test"] = min(quota["test"], max_files)
    quota["valid"] = min(quota["valid"], max_files - quota["test"])
    quota["train"] = max_files - quota["valid"] - quota["test"]
    rng = np.random.default_rng(seed)
    capped = {}
    for s in SPLITS:
        keep = np.sort(rng.choice(len(splits[s]), size=min(quota[s], len(splits[s])), replace=False))
        capped[s] = [splits[s][i] for i in keep]
    return capped
