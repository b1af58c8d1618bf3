"""The one seam between the modality-agnostic core and a modality.

A front end turns a corpus into ordered documents of token ids, turns a
model's NLL into the modality's metric, and turns sampled token ids back into
files (WAV, text). The trainer, evaluator and sampler only ever talk to this
interface; they never learn about bytes, subwords or μ-law.

Front ends are looked up by short name through :data:`FRONTENDS`, a table of
lazy import paths, so ``import ct_core`` loads no front-end library
(torchaudio, librosa, sentencepiece).

Configuration: the ``data`` section of a recipe is a flat mapping. Its key
``frontend`` picks the front end; every other key must be a field of that
front end's ``Config`` dataclass, built by
:func:`~ct_core.options.build_options` (unknown keys, wrong types and the
Config's ``validate(key)`` are one-line :class:`~ct_core.errors.ConfigError`).
A Config's class attribute ``same_data_fields`` names the options that
leave the data unchanged (where the corpus lives, the cache); every other
option changes what a model trains and is measured on, so ``ct-eval`` and a
resumed run refuse to change it (:func:`changed_data_options`).
``vocab_size`` must be known without reading the corpus (from the Config or
the checkpoint's state), so a run is fully validated before any data work.

Example::

    fe = build_frontend({"frontend": "synthetic", "n_documents": 8})
    fe.prepare()
    docs = fe.documents("train")          # list of 1-D integer arrays
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from ct_core.errors import ConfigError
from ct_core.options import build_options

SPLITS = ("train", "valid", "test")

#: short name -> "module:Class". Imported only when a recipe asks for it.
FRONTENDS: dict[str, str] = {
    "synthetic": "ct_core.data.synthetic:SyntheticFrontEnd",
    "audio": "ct_audio.frontend:AudioFrontEnd",
    "text": "ct_text.frontend:TextFrontEnd",
}


@dataclass
class SampleRequest:
    """Base of a front end's sampling options: a dataclass whose fields
    ``ct-sample`` turns into ``--options`` (help text in each field's
    ``metadata["help"]``, a placeholder in ``metadata["metavar"]``); its
    ``validate()`` raises one-line errors naming the option."""

    def validate(self) -> None:
        """Check the options together (e.g. two that exclude each other)."""


@dataclass
class SampleMedia:
    """Samples as TensorBoard shows them, by tag."""

    texts: dict[str, str] = field(default_factory=dict)
    audio: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)  # [T] float in [-1, 1], rate
    images: dict[str, np.ndarray] = field(default_factory=dict)  # [H, W, 3] uint8


class FrontEnd(abc.ABC):
    """Base class of every modality front end.

    Subclasses set ``name``, ``Config`` (a dataclass of their data options)
    and ``SampleRequest`` (a :class:`SampleRequest` dataclass of their
    sampling options), and implement the abstract methods. ``state`` is what :meth:`state_dict`
    returned when the checkpoint was written; with it, :meth:`decode`,
    :meth:`encode_prompt` and :attr:`vocab_size` work without the corpus
    (e.g. a tokenizer model travels inside the checkpoint).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    SampleRequest: ClassVar[type[SampleRequest]] = SampleRequest
    #: Suffix of the file :meth:`decode` writes per stream.
    sample_suffix: ClassVar[str] = ".txt"
    #: Suffixes of files :meth:`decode` writes beside each one (a spectrogram).
    companion_suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, state: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------ data
    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids; ids lie in ``[0, vocab_size)``."""

    @abc.abstractmethod
    def prepare(self, progress: bool = True) -> None:
        """Build (or find cached) token shards on disk. Idempotent: a second
        call with an unchanged corpus and settings is a cache hit."""

    @property
    def store_path(self) -> Path | None:
        """The folder of the prepared data once :meth:`prepare` has run (a
        token store in the cache), or ``None`` for data made in memory."""
        return None

    @abc.abstractmethod
    def documents(self, split: str) -> Sequence[np.ndarray]:
        """Ordered documents of ``split`` (one of :data:`SPLITS`), each a 1-D
        integer array (usually a read-only memmap view). Calls
        :meth:`prepare` first if needed."""

    @abc.abstractmethod
    def metrics(self, nll_sum: float, n_tokens: int, split: str, complete: bool = True) -> dict[str, float]:
        """The modality's metrics from the summed NLL (nats) over ``n_tokens``
        predicted tokens of a pass over ``split``. ``complete=False`` (a
        pass cut short) keeps the per-token metrics under the same names and
        leaves out those that need the whole split (baselines, per word)."""

    def probes(self, split: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """For tasks scored by exact match (the synthetic recall task): per
        document of ``split``, the input positions whose greedy prediction is
        scored ``[R]`` and each one's distance to what decides it ``[R]``;
        ``None`` for ordinary corpora."""
        return None

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Small state a checkpoint needs to rebuild this front end without
        the corpus. Values must load with ``torch.load(weights_only=True)``:
        tensors, numbers, strings, lists and dicts of those."""
        return {}

    # -------------------------------------------------------------- sampling
    @abc.abstractmethod
    def encode_prompt(self, request: Any) -> np.ndarray:
        """The prompt (text) or priming clip (audio) of ``request`` (a
        :attr:`SampleRequest`) as token ids ``[P]``; ``P`` may be 0."""

    def start_token(self) -> int:
        """The token that starts generation when there is no prompt
        (audio: the μ-law code of silence; text: a newline)."""
        return 0

    @abc.abstractmethod
    def num_new_tokens(self, request: Any) -> int:
        """How many tokens ``request`` asks for after the prompt."""

    def sample_paths(self, out: Path, batch: int) -> list[Path]:
        """The files :meth:`decode` writes for ``batch`` streams at ``out``,
        known before sampling so that the destination can be checked first.
        One stream and a file name (with a suffix): that file. Otherwise a
        folder: ``out`` less its suffix (``x.txt`` with two streams is folder
        ``x``, never a folder named like a file) or an existing folder as
        is, holding ``sample_000<suffix>``, ``sample_001<suffix>``, ...
        A front end refuses names it cannot write with a one-line error."""
        out = Path(out)
        if batch == 1 and out.suffix and not out.is_dir():
            return [out]
        folder = out if out.is_dir() else out.with_suffix("")
        return [folder / f"sample_{i:03d}{self.sample_suffix}" for i in range(batch)]

    @abc.abstractmethod
    def decode(self, tokens: np.ndarray, out: Path, prompt_len: int) -> list[Path]:
        """Write ``tokens`` ``[B, P + N]`` (prompt included) as the files
        :meth:`sample_paths` names for ``out`` and return what was written."""

    def stream_text(self, new_tokens: np.ndarray) -> str | None:
        """Text to print while sampling a single stream, for ``new_tokens``
        ``[k]``; ``None`` when the modality has nothing to stream."""
        return None

    def speed_summary(self, n_new_tokens: int, batch: int, seconds: float) -> str:
        """One line on sampling speed (audio adds the real-time factor)."""
        rate = n_new_tokens * batch / max(seconds, 1e-9)
        return f"{n_new_tokens * batch} tokens in {seconds:.2f} s ({rate:,.0f} tokens/s)"

    def render_samples(self, tokens: np.ndarray, step: int) -> SampleMedia:
        """What sampled ``tokens`` ``[B, T]`` look like in TensorBoard at
        evaluation time (text, audio clips, spectrograms)."""
        return SampleMedia()


def frontend_class(name: str) -> type[FrontEnd]:
    """Import the front end registered as ``name``."""
    if name not in FRONTENDS:
        raise ConfigError(
            f"data.frontend={name!r} is unknown; choose one of {sorted(FRONTENDS)}"
        )
    module_name, class_name = FRONTENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`, else a one-line error."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
    return split


def build_frontend(data: Mapping[str, Any], state: Mapping[str, Any] | None = None) -> FrontEnd:
    """Build the front end described by a recipe's ``data`` section."""
    values = dict(data)
    name = values.pop("frontend", None)
    if name is None:
        raise ConfigError(f"data.frontend is missing; choose one of {sorted(FRONTENDS)}")
    cls = frontend_class(name)
    return cls(build_options(cls.Config, values, "data"), state=state)


def changed_data_options(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(option, saved value, current value)`` for every option of the
    ``data`` section ``current`` that changes the data ``saved`` described:
    both are resolved through the front end's Config (so a default written
    out equals one left out), and its ``same_data_fields`` are ignored. A
    different ``frontend`` is the only change reported when there is one."""
    if saved.get("frontend") != current.get("frontend"):
        return [("frontend", saved.get("frontend"), current.get("frontend"))]
    cls = frontend_class(current["frontend"])
    before, after = (build_options(cls.Config, {k: v for k, v in d.items() if k != "frontend"}, "data")
                     for d in (saved, current))
    same = set(getattr(cls.Config, "same_data_fields", ()))
    return [(f.name, getattr(before, f.name), getattr(after, f.name)) for f in fields(cls.Config)
            if f.name not in same and getattr(before, f.name) != getattr(after, f.name)]


def option_value(value: Any) -> str:
    """``value`` as the user writes it on the command line (null, true, 8000)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(option_value(v) for v in value) + "]"
    return str(value)
