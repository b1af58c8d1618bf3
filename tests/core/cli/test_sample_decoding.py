"""ct-sample's decoding options: ``--kv-dtype bf16`` samples with a bf16
key/value cache and reports the audio real-time factor; a wrong choice is
one line; ``--compile`` is explained with the size its ``auto`` uses."""

from __future__ import annotations

import soundfile as sf

from ct_core.cli.sample import common_parser
from ct_core.model.sampling import COMPILE_MIN_TOKENS

from tests.conftest import run_cli
from tests.reliability.conftest import AUDIO, assert_one_line_error, untrained_checkpoint


def test_bf16_cache_samples_audio_and_reports_the_real_time_factor(tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", AUDIO)
    proc = run_cli("ct-sample", str(ckpt), "--seconds", "0.01", "--kv-dtype", "bf16", "--compile", "off",
                   "--out", str(tmp_path / "a.wav"))
    assert sf.info(tmp_path / "a.wav").frames == 80  # 0.01 s at 8 kHz
    assert "real-time factor" in proc.stderr and "compiling" not in proc.stderr
    bad = run_cli("ct-sample", str(ckpt), "--seconds", "0.01", "--kv-dtype", "int4", "--out",
                  str(tmp_path / "b.wav"), check=False)
    assert_one_line_error(bad, "--kv-dtype", "int4")
    assert not (tmp_path / "b.wav").exists()


def test_help_states_when_auto_compiles():
    text = " ".join(common_parser(add_help=True).format_help().split())
    assert f"auto: for requests of at least {COMPILE_MIN_TOKENS} tokens per stream" in text
    assert "bf16 halves the cache" in text
