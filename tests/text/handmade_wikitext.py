"""WikiText-like corpora the word-level tests write themselves."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

_NAMES = "Ada Bo Cy Di Ed Flo Gus Hal Ida Jo Kit Lu Max Ned Ola Pam".split()
_VERBS = "eats reads paints builds sells finds keeps drives".split()
_THINGS = "apples books walls boats hats maps coins cars".split()


def wikitext_lines(n_articles: int, seed: int) -> str:
    """WikiText-like text: ``" = Title = "`` lines, blank lines of one space,
    and paragraphs whose words follow fixed chains (each name has its verb,
    each verb its object), so a model beats a unigram fast; some ``<unk>``."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_articles):
        lines += [" ", f" = {rng.choice(_NAMES)} and {rng.choice(_NAMES)} = ", " "]
        for _ in range(rng.randint(2, 4)):
            sentences = []
            for _ in range(rng.randint(2, 5)):
                i = rng.randrange(len(_NAMES))
                thing = _THINGS[i % len(_THINGS)] if rng.random() < 0.9 else "<unk>"
                sentences.append(f"{_NAMES[i]} {_VERBS[i % len(_VERBS)]} {thing} .")
            lines.append(" " + " ".join(sentences) + " ")
        lines.append(" ")
    return "".join(line + "\n" for line in lines)


def write_wikitext(folder: Path, splits: dict[str, str]) -> Path:
    """``wiki.<split>.tokens`` for each split (``train``, ``valid``, ``test``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in splits.items():
        (folder / f"wiki.{split}.tokens").write_bytes(text.encode("utf-8"))
    return folder


def zip_wikitext(path: Path, splits: dict[str, str], folder: str = "wikitext-103") -> Path:
    """A zip laid out like ``wikitext-103-v1.zip``: ``<folder>/wiki.<split>.tokens``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for split, text in splits.items():
            z.writestr(f"{folder}/wiki.{split}.tokens", text.encode("utf-8"))
    return path
