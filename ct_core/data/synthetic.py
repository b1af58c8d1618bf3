"""A synthetic corpus generated in memory: tests, smoke runs, CPU demos.

Documents are deterministic in ``(seed, document index)`` and have structure
at three ranges, so a tiny model shows progress at once and memory pays off:

- short range: each document repeats a pattern whose period (2 to 8 tokens)
  is its own, and consecutive pattern tokens differ by +1, +2 or +3 modulo
  the vocabulary (a bigram regularity learnt in a few dozen steps);
- in-context: once a period has been seen, the next token is certain;
- long range (``kind="copy"``): runs of the pattern alternate with blocks of
  random tokens, and about half of the blocks repeat an earlier block of the
  same document, often further back than one segment, so only memory (or
  compressed memory) can predict them.

``kind="periodic"`` has the pattern only. ``kind="recall"`` is the
long-range recall task of :mod:`ct_core.data.recall` (its ``recall_*``
options), scored by exact-match accuracy against distance. Splits are disjoint sets of
documents: the first 80 % train, then 10 % valid, then 10 % test.

Example::

    fe = build_frontend({"frontend": "synthetic", "n_documents": 20, "max_len": 500})
    docs = fe.documents("train")     # 16 uint8 arrays of 200..500 tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from ct_core.atomic_write import write_text
from ct_core.errors import ConfigError, DataError
from ct_core.options import section_key
from ct_core.data.frontend import FrontEnd, SampleMedia, SampleRequest, check_split
from ct_core.data.recall import filler_size, recall_document, recall_probes
from ct_core.data.token_store import token_dtype

KINDS = ("copy", "periodic", "recall")


@dataclass
class SyntheticConfig:
    #: Options that leave the documents unchanged: none, they are generated from the others.
    same_data_fields: ClassVar[tuple[str, ...]] = ()

    n_documents: int = 64
    min_len: int = 200
    max_len: int = 2000
    vocab_size: int = 32
    seed: int = 0
    kind: str = "copy"
    # kind="recall" only (see ct_core.data.recall)
    recall_slots: int = 4
    recall_symbols: int = 16
    recall_write_len: int = 8
    recall_gap_min: int = 4
    recall_gap_max: int = 480

    def validate(self, key: Callable[[str], str] = section_key("data")) -> "SyntheticConfig":
        if self.n_documents < 3:
            raise ConfigError(f"{key('n_documents')}={self.n_documents} must be >= 3 (train, valid and test each need one)")
        if self.min_len < 2:
            raise ConfigError(f"{key('min_len')}={self.min_len} must be >= 2 (a document needs a target)")
        if self.max_len < self.min_len:
            raise ConfigError(f"{key('max_len')}={self.max_len} must be >= {key('min_len')}={self.min_len}")
        if not 4 <= self.vocab_size <= 2**31 - 1:
            raise ConfigError(f"{key('vocab_size')}={self.vocab_size} must lie in [4, 2^31)")
        if self.seed < 0:
            raise ConfigError(f"{key('seed')}={self.seed} must be an integer >= 0")
        if self.kind not in KINDS:
            raise ConfigError(f"{key('kind')}={self.kind!r} is unknown; allowed: {', '.join(KINDS)}")
        for name in ("recall_slots", "recall_symbols", "recall_write_len", "recall_gap_min"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key(name)}={getattr(self, name)} must be a positive integer")
        if self.recall_gap_max < self.recall_gap_min:
            raise ConfigError(f"{key('recall_gap_max')}={self.recall_gap_max} must be >= "
                              f"{key('recall_gap_min')}={self.recall_gap_min}")
        if self.kind == "recall":
            self._validate_recall_vocabulary(key)
        return self

    def _validate_recall_vocabulary(self, key: Callable[[str], str]) -> None:
        n_filler = filler_size(self.vocab_size, self.recall_slots, self.recall_symbols)
        if n_filler < 2:
            raise ConfigError(
                f"{key('vocab_size')}={self.vocab_size} leaves {n_filler} filler ids next to "
                f"{self.recall_slots} slots of {self.recall_symbols} symbols; it needs at least "
                f"{self.recall_slots * (1 + self.recall_symbols) + 2}"
            )


def generate_document(cfg: SyntheticConfig, index: int) -> np.ndarray:
    """Document ``index`` of the corpus described by ``cfg``, ``[L]``."""
    if cfg.kind == "recall":
        return recall_document(cfg, index)
    rng = np.random.default_rng([cfg.seed, index])
    length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
    period = int(rng.integers(2, 9))
    steps = rng.integers(1, 4, size=period)
    pattern = (rng.integers(cfg.vocab_size) + np.cumsum(steps)) % cfg.vocab_size  # [period]
    if cfg.kind == "periodic":
        return pattern[np.arange(length) % period]

    chunks: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    filled, phase = 0, 0
    while filled < length:
        run = int(rng.integers(16, 65))
        chunks.append(pattern[(phase + np.arange(run)) % period])
        phase += run
        if blocks and rng.random() < 0.5:
            block = blocks[int(rng.integers(len(blocks)))]  # a copy from further back
        else:
            block = rng.integers(0, cfg.vocab_size, size=int(rng.integers(8, 25)))
            blocks.append(block)
        chunks.append(block)
        filled += run + len(block)
    return np.concatenate(chunks)[:length]


def split_ranges(n_documents: int) -> dict[str, range]:
    """Document indices of each split: 80 / 10 / 10, at least one each."""
    n_held = max(1, n_documents // 10)
    n_train = n_documents - 2 * n_held
    return {
        "train": range(0, n_train),
        "valid": range(n_train, n_train + n_held),
        "test": range(n_train + n_held, n_documents),
    }


@dataclass
class SyntheticSampleRequest(SampleRequest):
    """``ct-sample`` options of a synthetic-data checkpoint."""

    tokens: int = field(default=64, metadata={"help": "number of token ids to generate (default 64)"})
    prompt: str = field(default="", metadata={"help": 'prompt as space-separated token ids, e.g. "1 2 3"'})

    def validate(self) -> None:
        if self.tokens <= 0:
            raise ConfigError(f"--tokens {self.tokens}: must be a positive integer")


class SyntheticFrontEnd(FrontEnd):
    """Front end over :func:`generate_document`; token ids are their own text."""

    name = "synthetic"
    Config = SyntheticConfig
    SampleRequest = SyntheticSampleRequest

    def __init__(self, cfg: SyntheticConfig, state: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg.validate(), state)
        self._documents: dict[str, list[np.ndarray]] = {}

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def prepare(self, progress: bool = True) -> None:
        """Nothing to prepare: documents are generated on demand."""

    def documents(self, split: str) -> list[np.ndarray]:
        check_split(split)
        if split not in self._documents:
            dtype = token_dtype(self.cfg.vocab_size)
            self._documents[split] = [
                generate_document(self.cfg, i).astype(dtype) for i in split_ranges(self.cfg.n_documents)[split]
            ]
        return self._documents[split]

    def probes(self, split: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Recall probes of every document of ``split`` (kind ``recall`` only)."""
        if self.cfg.kind != "recall":
            return None
        return [recall_probes(doc, self.cfg) for doc in self.documents(split)]

    def metrics(self, nll_sum: float, n_tokens: int, split: str, complete: bool = True) -> dict[str, float]:
        if n_tokens <= 0:
            raise DataError(f"no tokens were evaluated on split {split!r}; its documents are too short")
        nll = nll_sum / n_tokens
        return {
            "nll": nll,
            "ppl": math.exp(nll) if nll < 700 else math.inf,
            "bits_per_token": nll / math.log(2),
        }

    # -------------------------------------------------------------- sampling
    def encode_prompt(self, request: SyntheticSampleRequest) -> np.ndarray:
        text = request.prompt
        try:
            ids = np.array([int(t) for t in text.replace(",", " ").split()], dtype=np.int64)
        except ValueError:
            raise ConfigError(f"--prompt {text!r} must be space-separated integer token ids") from None
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ConfigError(f"--prompt ids must lie in [0, {self.vocab_size}); got {text!r}")
        return ids  # [P]

    def num_new_tokens(self, request: SyntheticSampleRequest) -> int:
        return request.tokens

    def sample_paths(self, out: Path, batch: int) -> list[Path]:
        """As the base class, except that one stream and a name without a
        suffix is that name plus ``.txt``."""
        out = Path(out)
        if batch == 1 and not out.suffix and not out.is_dir():
            return [out.with_suffix(".txt")]
        return super().sample_paths(out, batch)

    def decode(self, tokens: np.ndarray, out: Path, prompt_len: int) -> list[Path]:
        """One line of space-separated ids per stream (prompt included), in
        the files :meth:`sample_paths` names."""
        rows = np.atleast_2d(np.asarray(tokens))  # [B, P + N]
        paths = self.sample_paths(out, len(rows))
        for path, row in zip(paths, rows):
            write_text(path, " ".join(str(int(t)) for t in row) + "\n")  # atomic: never a cut-off sample
        return paths

    def stream_text(self, new_tokens: np.ndarray) -> str | None:
        return "".join(f"{int(t)} " for t in np.asarray(new_tokens).reshape(-1))

    def render_samples(self, tokens: np.ndarray, step: int) -> SampleMedia:
        rows = np.atleast_2d(np.asarray(tokens))
        return SampleMedia(texts={f"samples/{i}": " ".join(str(int(t)) for t in row) for i, row in enumerate(rows)})
