"""The audio front end: raw speech as 8-bit μ-law samples, one token per sample.

Registered in :data:`ct_core.data.frontend.FRONTENDS` as ``audio``; a recipe's
``data`` section holds the fields of :class:`AudioConfig`.

Example::

    fe = build_frontend({"frontend": "audio", "corpus": "demo", "sample_rate": 8000})
    fe.prepare()
    fe.documents("train")[0]             # uint8 μ-law codes [T] of one utterance
    fe.metrics(nll_sum, n_tokens, "valid")
    # {'nll_nats': ..., 'bits_per_sample': ..., 'unigram_bits': ..., 'trigram_bits': ...}
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ct_audio.audio_io import UnusableAudio
from ct_audio.baselines import CACHE_FILE, cached_baselines
from ct_audio.config import AudioConfig, AudioSampleRequest
from ct_audio.mulaw import mulaw_decode, mulaw_encode
from ct_audio.prepare import plan_preparation, prepare_store
from ct_audio.wav_out import figure_to_rgb, spectrogram_figure, write_spectrogram_png, write_wav
from ct_core.errors import ConfigError, DataError
from ct_core.data.frontend import FrontEnd, SampleMedia, check_split
from ct_core.data.token_store import TokenStore

#: Streams logged to TensorBoard per evaluation.
_LOGGED_STREAMS = 4


class AudioFrontEnd(FrontEnd):
    """μ-law waveform front end (see :class:`AudioConfig` for the options).

    Its state is entirely in the config (rate, μ), so :meth:`state_dict` is
    empty and decoding needs no corpus.
    """

    name = "audio"
    Config = AudioConfig
    SampleRequest = AudioSampleRequest
    sample_suffix = ".wav"
    companion_suffixes = (".png",)

    def __init__(self, cfg: AudioConfig, state: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg, state)
        self.cfg: AudioConfig = cfg
        self._store: TokenStore | None = None

    # ------------------------------------------------------------------ data
    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def prepare(self, progress: bool = True) -> None:
        self._store = TokenStore(prepare_store(plan_preparation(self.cfg), progress=progress))

    @property
    def store(self) -> TokenStore:
        """The prepared store (prepared on first use)."""
        if self._store is None:
            self.prepare()
        return self._store

    @property
    def store_path(self) -> Path | None:
        return None if self._store is None else self._store.path

    def documents(self, split: str) -> Sequence[np.ndarray]:
        check_split(split)
        return self._chunked(self.store.documents(split))

    def _chunked(self, documents: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
        """Utterances cut into ``data.chunk_samples`` pieces (views), if set."""
        n = self.cfg.chunk_samples
        if not n:
            return documents
        return [doc[i : i + n] for doc in documents for i in range(0, len(doc), n)]

    def _prepared_store(self) -> TokenStore | None:
        """The store if it is already on disk; ``None`` when the corpus or its
        prepared data is not available here (e.g. evaluating elsewhere)."""
        if self._store is None:
            try:
                plan = plan_preparation(self.cfg)
            except (DataError, ConfigError):
                return None
            if TokenStore.exists(plan.path):
                self._store = TokenStore(plan.path)
        return self._store

    def metrics(self, nll_sum: float, n_tokens: int, split: str, complete: bool = True) -> dict[str, float]:
        nll = float(nll_sum) / max(int(n_tokens), 1)
        out = {"nll_nats": nll, "bits_per_sample": nll / math.log(2)}
        store = self._prepared_store() if complete else None
        if store is not None and split in store.splits():
            chunk = self.cfg.chunk_samples
            base = cached_baselines(store.path, lambda s: self._chunked(store.documents(s)), split, self.vocab_size,
                                    cache_name=f"baselines_chunk{chunk}.json" if chunk else CACHE_FILE)
            if base["tokens"]:
                out["unigram_bits"] = base["unigram_bits"]
                out["trigram_bits"] = base["trigram_bits"]
        return out

    # -------------------------------------------------------------- sampling
    def encode_prompt(self, request: AudioSampleRequest) -> np.ndarray:
        """μ-law codes ``[P]`` (int64) of the first ``--prime-seconds`` of
        ``--prime``, preprocessed exactly like the training data; ``[0]``
        without ``--prime``."""
        if not request.prime:
            return np.zeros(0, dtype=np.int64)
        try:
            clip = self.cfg.preprocessor().load(Path(request.prime))
        except UnusableAudio as e:
            raise DataError(f"--prime {request.prime}: {e.reason}") from None
        wave = clip.wave[: round(request.prime_seconds * self.cfg.sample_rate)]  # [P]
        return mulaw_encode(wave, self.cfg.mu).astype(np.int64)

    def start_token(self) -> int:
        """The μ-law code of silence (amplitude 0): unprompted generation
        starts from a quiet sample."""
        return int(mulaw_encode(np.zeros(1, dtype=np.float32), self.cfg.mu)[0])

    def num_new_tokens(self, request: AudioSampleRequest) -> int:
        return round(request.seconds * self.cfg.sample_rate)

    def sample_paths(self, out: Path, batch: int) -> list[Path]:
        """As the base class, for WAV files: ``out`` is a ``.wav`` name or a
        folder; any other file name (``x.mp3``) is refused."""
        out = Path(out)
        if out.suffix and out.suffix.lower() != self.sample_suffix and not out.is_dir():
            raise ConfigError(f"--out {out}: audio samples are written as WAV; name a .wav file or a folder")
        return super().sample_paths(out, batch)

    def decode(self, tokens: np.ndarray, out: Path, prompt_len: int) -> list[Path]:
        """Write each stream of ``tokens`` ``[B, P + N]`` as a 16-bit WAV at the
        model's rate (priming clip included) with a spectrogram PNG beside it.

        The files are those of :meth:`sample_paths`: one stream and ``out``
        ending in ``.wav``, that file; otherwise ``sample_000.wav``,
        ``sample_001.wav``, ... in folder ``out`` (``x.wav`` becomes ``x``).

        The spectrogram marks where the priming clip ends. A one-token prompt
        is the :meth:`start_token` of unprompted generation, not a clip, so
        it gets no mark.
        """
        tokens = np.atleast_2d(np.asarray(tokens))  # [B, P + N]
        targets = self.sample_paths(out, tokens.shape[0])
        sr = self.cfg.sample_rate
        boundary = prompt_len / sr if prompt_len > 1 else None
        written: list[Path] = []
        for stream, wav_path in zip(tokens, targets):
            wave = mulaw_decode(stream, self.cfg.mu)  # [P + N]
            # The name as text: under an ASCII locale a non-ASCII name holds escaped bytes.
            name = os.fsencode(wav_path.stem).decode("utf-8", "replace")
            title = f"{name}: {len(wave) / sr:.2f} s at {sr} Hz"
            if boundary is not None:
                title += f", primed with {boundary:.2f} s"
            written.append(write_wav(wav_path, wave, sr))
            written.append(write_spectrogram_png(wav_path.with_suffix(".png"), wave, sr, title, boundary))
        return written

    def speed_summary(self, n_new_tokens: int, batch: int, seconds: float) -> str:
        """Samples per second and the real-time factor: seconds of audio
        generated (all streams together) per second of wall time."""
        sr = self.cfg.sample_rate
        rate = n_new_tokens * batch / max(seconds, 1e-9)
        return (f"{batch} x {n_new_tokens:,} samples ({n_new_tokens / sr:.2f} s of audio each) "
                f"in {seconds:.2f} s: {rate:,.0f} samples/s, real-time factor {rate / sr:.3f}")

    def render_samples(self, tokens: np.ndarray, step: int) -> SampleMedia:
        """Audio clips and spectrograms of the first few streams of ``tokens``
        ``[B, T]``."""
        sr = self.cfg.sample_rate
        media = SampleMedia()
        for i, stream in enumerate(np.atleast_2d(np.asarray(tokens))[:_LOGGED_STREAMS]):
            wave = mulaw_decode(stream, self.cfg.mu)  # [T]
            media.audio[f"samples/audio_{i}"] = (wave, sr)
            fig = spectrogram_figure(wave, sr, f"sample {i}, step {step}")
            media.images[f"samples/spectrogram_{i}"] = figure_to_rgb(fig)
        return media
