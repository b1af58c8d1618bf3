"""Splits that preparation meant to fill must hold something to predict.

A corpus is split before its files are read (so that the split never
depends on which files happen to be readable). When the files of a split
all turn out unusable (unreadable, silent, empty), the split is empty:
training would fail later with advice about batch sizes, and evaluation
would report NaN. Preparation stops instead, in one line that says which
files went to which split and why those skipped were skipped.

A split is needed when it is ``train`` or when files were assigned to it;
it is empty when none of its documents has two tokens (a document's first
token is context only, so one token predicts nothing).

Example::

    check_splits("data.root=/data/speech",
                 planned={"train": ["a.wav"], "valid": ["b.wav"], "test": ["c.wav"]},
                 kept={"train": [], "valid": [("b.wav", 1600)], "test": [("c.wav", 1600)]},
                 skipped={"a.wav": "unreadable (not a WAV file)"})
    # DataError: data.root=/data/speech: no usable file is left in the train split (train: a.wav
    # skipped: unreadable (not a WAV file); valid: b.wav; test: c.wav); add files or replace the skipped ones
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ct_core.data.frontend import SPLITS
from ct_core.errors import DataError

#: Files named per split in the message; the rest are counted.
_SHOWN = 3


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def describe_splits(planned: Mapping[str, Sequence[str]], kept: Mapping[str, Sequence[tuple[str, int]]],
                    skipped: Mapping[str, str]) -> str:
    """``train: a.wav skipped: reason; valid: b.wav; test: none``."""
    parts = []
    for split in SPLITS:
        used = [name for name, _ in kept.get(split, ())]
        dropped = [f"{name} skipped: {skipped[name]}" for name in planned.get(split, ()) if name in skipped]
        parts.append(f"{split}: {_names(used + dropped) or 'no file'}")
    return "; ".join(parts)


def check_splits(source: str, planned: Mapping[str, Sequence[str]], kept: Mapping[str, Sequence[tuple[str, int]]],
                 skipped: Mapping[str, str]) -> None:
    """One-line :class:`DataError` for the first needed split that is empty.

    ``source`` names the corpus as the user set it (``data.root=...``);
    ``planned`` lists each split's input names, ``kept`` the ``(name,
    tokens)`` of the documents written, ``skipped`` the reason of every
    input that gave no document."""
    for split in SPLITS:
        needed = split == "train" or bool(planned.get(split))
        if needed and not any(tokens >= 2 for _, tokens in kept.get(split, ())):
            raise DataError(
                f"{source}: no usable file is left in the {split} split "
                f"({describe_splits(planned, kept, skipped)}); add files or replace the skipped ones"
            )
