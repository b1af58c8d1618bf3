"""Options of the audio front end: the ``data`` section of an audio recipe
(:class:`AudioConfig`) and the options of ``ct-sample`` (:class:`AudioSampleRequest`).

Every key of the recipe's ``data`` mapping except ``frontend`` is a field of
:class:`AudioConfig`; values are checked when the config is built, so a bad
option fails before any audio is read.

Example::

    cfg = AudioConfig(corpus="librispeech", root="/data/LibriSpeech", normalize="rms")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, ClassVar

from ct_audio.audio_io import NORMALIZE_MODES, Preprocessor
from ct_audio.corpora import CORPORA
from ct_core.data.frontend import SampleRequest
from ct_core.errors import ConfigError
from ct_core.options import section_key
from ct_core.data.token_store import default_cache_dir


#: Rates a model may run at. Below 1 kHz no speech is left (and a segment
#: spans seconds); above 96 kHz a second of audio outgrows any memory.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 96_000
#: Quietest loudness target: 8-bit μ-law (μ = 255) codes everything below
#: about -81 dBFS as silence, and a -60 dBFS utterance already uses only a
#: handful of classes.
MIN_LEVEL_DB = -60.0


@dataclasses.dataclass
class AudioConfig:
    """Settings of corpus reading, preprocessing, splits and caching.

    corpus: ``librispeech`` | ``ljspeech`` | ``vctk`` | ``fsdd`` | ``folder`` |
        ``demo`` (the LJ Speech excerpt shipped in ``ct_audio/data``).
    root: the corpus folder (ignored for ``demo``).
    sample_rate: the model's rate in Hz, 1,000 to 96,000; every file is
        resampled to it (paper: 24,000).
    mu: μ-law parameter; ``mu + 1`` classes (255 -> 256 classes, 8 bits).
    trim_silence / top_db: cut leading and trailing audio quieter than
        ``top_db`` below the utterance's loudest frame.
    normalize: ``none`` | ``peak`` (to ``peak_db`` dBFS) | ``rms`` (to
        ``rms_db`` dBFS), per utterance.
    silence_db: files whose peak is below this level are skipped as silent.
    valid_fraction / test_fraction: share of speakers (or of utterances when
        speakers are unknown) held out, where the corpus has no official split.
    max_files: keep at most this many utterances (quick runs).
    chunk_samples: cut every utterance into independent documents of this
        many samples (the paper trained on 3,840-sample chunks); None keeps
        whole utterances. Cut when read, so the prepared data is shared.
    cache_dir: where prepared data goes (None: ``$CT_CACHE_DIR`` or
        ``~/.cache/compressive-transformer``).
    seed: seeds the split and ``max_files`` draws.

    ``same_data_fields`` are the options that leave the data unchanged
    (where the corpus and the cache live): the only ``data`` options
    ``ct-eval`` and a resumed run may change.
    """

    same_data_fields: ClassVar[tuple[str, ...]] = ("root", "cache_dir")

    corpus: str = "demo"
    root: str | None = None
    sample_rate: int = 24000
    mu: int = 255
    trim_silence: bool = False
    top_db: float = 40.0
    normalize: str = "none"
    peak_db: float = -1.0
    rms_db: float = -20.0
    silence_db: float = -60.0
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    max_files: int | None = None
    chunk_samples: int | None = None
    cache_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, key: Callable[[str], str] = section_key("data")) -> None:
        """One-line errors naming the option (``key``: its name in the recipe)."""
        if self.corpus not in CORPORA:
            raise ConfigError(f"{key('corpus')}={self.corpus!r} is unknown; choose one of {', '.join(CORPORA)}")
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ConfigError(f"{key('sample_rate')}={self.sample_rate} must lie in {MIN_SAMPLE_RATE:,}..{MAX_SAMPLE_RATE:,} "
                              "Hz, e.g. 24000 (the paper) or 8000")
        if not 1 <= self.mu <= 255:
            raise ConfigError(f"{key('mu')}={self.mu} must lie in 1..255 so codes fit one byte (255: 8-bit μ-law)")
        if self.normalize not in NORMALIZE_MODES:
            raise ConfigError(f"{key('normalize')}={self.normalize!r} is unknown; choose one of {NORMALIZE_MODES}")
        for name in ("valid_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{key(name)}={getattr(self, name)} must lie in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ConfigError(f"{key('valid_fraction')} + {key('test_fraction')} must be below 1 to leave training data")
        if self.max_files is not None and self.max_files < 1:
            raise ConfigError(f"{key('max_files')}={self.max_files} must be a positive count or null")
        if self.chunk_samples is not None and self.chunk_samples < 2:
            raise ConfigError(f"{key('chunk_samples')}={self.chunk_samples} must be at least 2 samples, or null")
        if self.top_db <= 0:
            raise ConfigError(f"{key('top_db')}={self.top_db} must be positive (dB below the loudest frame)")
        for name in ("peak_db", "rms_db", "silence_db"):
            if getattr(self, name) > 0:
                raise ConfigError(f"{key(name)}={getattr(self, name)} must be <= 0 (a level in dB below full scale)")
        for name in ("peak_db", "rms_db"):
            if getattr(self, name) < MIN_LEVEL_DB:
                raise ConfigError(f"{key(name)}={getattr(self, name)} must be >= {MIN_LEVEL_DB:g} dBFS: quieter "
                                  "utterances are little more than silence in 8-bit μ-law")
        if self.seed < 0:
            raise ConfigError(f"{key('seed')}={self.seed} must be an integer >= 0")

    @property
    def vocab_size(self) -> int:
        return self.mu + 1

    def cache_root(self) -> Path:
        """Folder holding this front end's prepared stores."""
        base = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
        return base / "audio"

    def preprocessor(self) -> Preprocessor:
        """The waveform pipeline these settings describe."""
        return Preprocessor(
            sample_rate=self.sample_rate, trim_silence=self.trim_silence, top_db=self.top_db,
            normalize=self.normalize, peak_db=self.peak_db, rms_db=self.rms_db,
            silence_db=self.silence_db,
        )

    def token_settings(self) -> dict:
        """Every setting that changes the prepared tokens (for the content hash)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("cache_dir", "root", "chunk_samples")}


#: Longest audio one ct-sample call generates; far longer requests are typos
#: (``1e12``) that would otherwise run for ever.
MAX_SECONDS = 3600.0


@dataclasses.dataclass
class AudioSampleRequest(SampleRequest):
    """``ct-sample`` options of an audio checkpoint."""

    seconds: float = dataclasses.field(
        default=3.0, metadata={"help": "seconds of audio to generate after the priming clip (default 3)"})
    prime: str | None = dataclasses.field(
        default=None, metadata={"help": "audio file whose beginning primes the generation", "metavar": "FILE"})
    prime_seconds: float = dataclasses.field(
        default=1.0, metadata={"help": "seconds of --prime to use (default 1.0)", "metavar": "S"})

    def validate(self) -> None:
        # `not x > 0` also refuses NaN.
        if not self.seconds > 0:
            raise ConfigError(f"--seconds {self.seconds:g}: must be a positive number of seconds")
        if self.seconds > MAX_SECONDS:
            raise ConfigError(f"--seconds {self.seconds:g}: at most {MAX_SECONDS:g} (one hour) per call; "
                              "continue a longer piece with --prime from the end of the last one")
        if not 0 < self.prime_seconds <= MAX_SECONDS:
            raise ConfigError(f"--prime-seconds {self.prime_seconds:g}: must be positive, at most {MAX_SECONDS:g}")
