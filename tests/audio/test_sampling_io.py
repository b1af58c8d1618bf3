"""Sampling side of the front end: options, priming clips, WAV/PNG output, logging."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf

from ct_audio import frontend as frontend_module
from ct_audio.config import AudioSampleRequest
from ct_audio.frontend import AudioFrontEnd
from ct_audio.mulaw import mulaw_decode
from ct_audio.wav_out import spectrogram_figure
from ct_core.cli.sample import add_request_arguments, request_from_args
from ct_core.data.frontend import build_frontend, frontend_class
from ct_core.errors import ConfigError, DataError
from ct_core.train.metric_logger import MetricLogger

from .conftest import reference_codes, tone, write

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fe(**kw) -> AudioFrontEnd:
    return build_frontend({"frontend": "audio", "sample_rate": 8000, **kw})


def _args(*argv: str) -> AudioSampleRequest:
    """The audio SampleRequest as ct-sample parses it from ``argv``."""
    parser = argparse.ArgumentParser()
    add_request_arguments(parser, AudioSampleRequest)
    return request_from_args(AudioSampleRequest, parser.parse_args(list(argv)))


def test_registered_and_configured_through_the_core():
    assert frontend_class("audio") is AudioFrontEnd
    fe = _fe()
    assert fe.vocab_size == 256 and fe.name == "audio" and fe.state_dict() == {}
    assert AudioFrontEnd.Config().sample_rate == 24000 and AudioFrontEnd.Config().mu == 255
    with pytest.raises(ConfigError, match="data.corpus"):
        _fe(corpus="timit")
    with pytest.raises(ConfigError, match="data.normalize"):
        _fe(normalize="loud")
    with pytest.raises(ConfigError, match="data.bitrate"):
        _fe(bitrate=8)


def test_sample_arguments_and_lengths():
    args = _args()
    assert (args.seconds, args.prime, args.prime_seconds) == (3.0, None, 1.0)
    assert _fe().num_new_tokens(_args("--seconds", "0.51234")) == round(0.51234 * 8000)
    assert _fe().num_new_tokens(args) == 24000
    empty = _fe().encode_prompt(args)
    assert empty.shape == (0,) and empty.dtype == np.int64
    # unprompted generation starts from silence: the class of amplitude 0
    assert _fe().start_token() == 128
    assert abs(mulaw_decode(np.array([_fe().start_token()]))[0]) < 1e-4


def test_encode_prompt_is_the_first_seconds_preprocessed_like_training(tmp_path):
    path = write(tmp_path / "prime.flac", tone(300.0, 0.8, 16000, seed=0), 16000)
    prompt = _fe().encode_prompt(_args("--prime", str(path), "--prime-seconds", "0.25"))
    assert prompt.dtype == np.int64 and prompt.shape == (2000,)
    assert np.array_equal(prompt, reference_codes(path, 8000)[:2000])
    # a clip shorter than --prime-seconds is used whole
    whole = _fe().encode_prompt(_args("--prime", str(path), "--prime-seconds", "5"))
    assert np.array_equal(whole, reference_codes(path, 8000))


def test_bad_prime_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match="--prime .*nothere.wav: file not found") as info:
        _fe().encode_prompt(_args("--prime", str(tmp_path / "nothere.wav")))
    assert "\n" not in str(info.value)
    (tmp_path / "junk.wav").write_text("junk")
    with pytest.raises(DataError, match="junk.wav: unreadable"):
        _fe().encode_prompt(_args("--prime", str(tmp_path / "junk.wav")))


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_decode_one_stream_writes_the_named_wav_and_png(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(1, 12345))
    paths = _fe().decode(tokens, tmp_path / "out" / "clip.wav", prompt_len=4000)
    assert paths == [tmp_path / "out" / "clip.wav", tmp_path / "out" / "clip.png"]
    info = sf.info(paths[0])
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (8000, 12345, 1, "PCM_16")
    wave, _ = sf.read(paths[0], dtype="float32")
    np.testing.assert_allclose(wave, mulaw_decode(tokens[0]), atol=1.01 / 32768)
    _assert_png(paths[1])


def test_decode_a_batch_into_a_folder(tmp_path):
    tokens = np.full((3, 800), 128, dtype=np.int64)
    tokens[:, ::8] = 250
    paths = _fe(sample_rate=16000).decode(tokens, tmp_path / "samples", prompt_len=0)
    names = [p.name for p in paths]
    assert names == ["sample_000.wav", "sample_000.png", "sample_001.wav", "sample_001.png",
                     "sample_002.wav", "sample_002.png"]
    assert all(p.parent == tmp_path / "samples" for p in paths)
    for p in paths[::2]:
        assert sf.info(p).frames == 800 and sf.info(p).samplerate == 16000
    for p in paths[1::2]:
        _assert_png(p)
    # several streams and a .wav name: a folder named after it
    more = _fe().decode(tokens[:2], tmp_path / "demo.wav", prompt_len=0)
    assert more[0] == tmp_path / "demo" / "sample_000.wav"


def test_speed_summary_reports_the_real_time_factor():
    line = _fe().speed_summary(n_new_tokens=8000, batch=2, seconds=4.0)
    assert "4,000 samples/s" in line and "real-time factor 0.500" in line


class _RecordingWriter:
    def __init__(self):
        self.calls = []

    def add_audio(self, tag, snd, step, sample_rate):
        self.calls.append(("audio", tag, np.asarray(snd), step, sample_rate))

    def add_image(self, tag, img, step, dataformats):
        self.calls.append(("image", tag, np.asarray(img), step, dataformats))


def test_rendered_samples_reach_tensorboard_as_audio_and_spectrograms(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 256, size=(6, 4000))
    writer = _RecordingWriter()
    logger = MetricLogger(None, total_steps=1)
    logger.writer = writer
    logger.log_media(7, _fe().render_samples(tokens, step=7))
    audio = [c for c in writer.calls if c[0] == "audio"]
    images = [c for c in writer.calls if c[0] == "image"]
    assert len(audio) == len(images) == 4  # the first few streams only
    kind, tag, snd, step, rate = audio[0]
    assert snd.shape == (1, 4000) and rate == 8000 and step == 7
    assert np.abs(snd).max() <= 1.0
    np.testing.assert_allclose(snd[0], mulaw_decode(tokens[0]))
    assert images[0][2].dtype == np.uint8 and images[0][2].shape[2] == 3 and images[0][4] == "HWC"

    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path / "tb") as real:
        logger.writer = real
        logger.log_media(1, _fe().render_samples(tokens[:1], step=1))
    events = list((tmp_path / "tb").glob("events.*"))
    assert events and events[0].stat().st_size > 10_000  # audio + image payloads


def test_spectrogram_marks_the_end_of_the_priming_clip(monkeypatch, tmp_path):
    wave = tone(440.0, 2.0, 8000)
    ax = spectrogram_figure(wave, 8000, "primed", boundary_s=0.5).axes[0]
    assert [tuple(line.get_xdata()) for line in ax.get_lines()] == [(0.5, 0.5)]
    assert ax.get_title() == "primed" and ax.get_xlabel() == "time (s)"
    assert ax.get_xlim() == (0.0, 2.0)
    assert spectrogram_figure(wave, 8000, "plain").axes[0].get_lines() == []

    seen = []
    real = frontend_module.write_spectrogram_png

    def spy(path, wave, sr, title, boundary_s=None):
        seen.append(boundary_s)
        return real(path, wave, sr, title, boundary_s)

    monkeypatch.setattr(frontend_module, "write_spectrogram_png", spy)
    tokens = np.full((1, 8000), 128)
    _fe().decode(tokens, tmp_path / "a.wav", prompt_len=2000)
    _fe().decode(tokens, tmp_path / "b.wav", prompt_len=1)  # the start token only
    assert seen == [0.25, None]
