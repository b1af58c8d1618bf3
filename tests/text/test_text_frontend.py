"""TextFrontEnd: checkpoint state, prompts, decoding, streaming, TensorBoard text."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import torch

from ct_core.cli.sample import add_request_arguments, request_from_args
from ct_core.errors import ConfigError, DataError
from ct_core.data.frontend import build_frontend
from ct_text.config import TextConfig
from ct_text.frontend import TextFrontEnd

PROMPT = "The war \u2014 caf\u00e9 \u65e5\u672c\r\nnext line"


def sample_args(fe_cls=TextFrontEnd, argv=()):
    """The front end's SampleRequest as ct-sample parses it from ``argv``."""
    parser = argparse.ArgumentParser()
    add_request_arguments(parser, fe_cls.SampleRequest)
    return request_from_args(fe_cls.SampleRequest, parser.parse_args(list(argv)))


@pytest.fixture
def subword(pg19_tree, tmp_path):
    fe = TextFrontEnd(TextConfig(corpus="pg19", root=str(pg19_tree), vocab_size=400,
                                 cache_dir=str(tmp_path / "cache")))
    fe.prepare(progress=False)
    return fe


def reload(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_rebuilds_sentencepiece_without_corpus_or_cache(subword, tmp_path):
    state = reload(subword.state_dict())
    assert state["tokenizer"] == "sentencepiece" and state["sentencepiece_model"].dtype == torch.uint8
    empty_cache = tmp_path / "empty_cache"
    rebuilt = TextFrontEnd(TextConfig(corpus="pg19", root=str(tmp_path / "no_corpus_here"),
                                      cache_dir=str(empty_cache)), state=state)
    assert rebuilt.vocab_size == subword.vocab_size
    args = sample_args(argv=["--prompt", PROMPT])
    ids = rebuilt.encode_prompt(args)
    assert ids.dtype == np.int64 and ids.tolist() == subword.encode_prompt(args).tolist()
    out = rebuilt.decode(ids[None, :], tmp_path / "s.txt", prompt_len=len(ids))
    assert out[0].read_bytes() == PROMPT.encode()
    assert not empty_cache.exists()  # nothing was prepared, read or trained


def test_state_dict_of_bytes_front_end(tmp_path):
    fe = TextFrontEnd(TextConfig(corpus="enwik8"))
    state = reload(fe.state_dict())
    rebuilt = build_frontend({"frontend": "text", "corpus": "enwik8", "path": "/nowhere"}, state=state)
    assert rebuilt.vocab_size == 256
    assert rebuilt.encode_prompt(sample_args(argv=["--prompt", PROMPT])).tolist() == list(PROMPT.encode())


def test_checkpoint_tokenizer_gets_its_own_store_when_the_corpus_changed(subword, pg19_tree):
    state = subword.state_dict()
    (pg19_tree / "train" / "84.txt").write_text("Retrained text would differ.\n" * 100)
    rebuilt = TextFrontEnd(subword.cfg, state=state)
    (doc,) = [d for d in rebuilt.documents("test")]
    assert rebuilt._store.manifest["tokenizer"]["sha256"] == subword._tokenizer.sha256
    assert doc.tolist() == subword.documents("test")[0].tolist()  # the checkpoint's ids


def test_prompt_options(tmp_path):
    fe = TextFrontEnd(TextConfig(corpus="file"))
    args = sample_args()
    assert args.tokens == 400 and fe.num_new_tokens(args) == 400
    assert fe.encode_prompt(args).shape == (0,)
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_bytes(b"\xef\xbb\xbfHello\r\n")
    args = sample_args(argv=["--prompt-file", str(prompt_file), "--tokens", "7"])
    assert fe.encode_prompt(args).tolist() == list(b"Hello\r\n") and fe.num_new_tokens(args) == 7
    with pytest.raises(DataError) as err:
        fe.encode_prompt(sample_args(argv=["--prompt-file", str(tmp_path / "missing.txt")]))
    assert "missing.txt" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="--prompt and --prompt-file exclude each other"):
        sample_args(argv=["--prompt", "x", "--prompt-file", str(prompt_file)])
    with pytest.raises(ConfigError, match="--tokens -2: must be >= 0"):
        sample_args(argv=["--tokens", "-2"])
    assert fe.start_token() == 10


def test_decode_writes_one_file_or_a_folder(tmp_path):
    fe = TextFrontEnd(TextConfig(corpus="file"))
    one = np.frombuffer(b"prompt and more", dtype=np.uint8).astype(np.int64)[None, :]  # [1, T]
    (path,) = fe.decode(one, tmp_path / "one.txt", prompt_len=6)
    assert path == tmp_path / "one.txt" and path.read_bytes() == b"prompt and more"
    many = np.stack([np.frombuffer(s, dtype=np.uint8) for s in (b"abc", b"de\n", b"\xc3\xa9!")])  # [3, 3]
    paths = fe.decode(many, tmp_path / "many", prompt_len=0)
    assert [p.name for p in paths] == ["sample_000.txt", "sample_001.txt", "sample_002.txt"]
    assert [p.read_bytes() for p in paths] == [b"abc", b"de\n", "\u00e9!".encode()]


def test_stream_text_prints_a_split_character_once():
    fe = TextFrontEnd(TextConfig(corpus="file"))
    e_acute, check = "\u00e9".encode(), "\u2713".encode()  # 2 and 3 bytes
    pieces = [b"caf" + e_acute[:1], e_acute[1:] + b" " + check[:1], check[1:2], check[2:] + b"!"]
    printed = [fe.stream_text(np.frombuffer(p, dtype=np.uint8)) for p in pieces]
    assert printed == ["caf", "\u00e9 ", "", "\u2713!"]


def test_stream_text_sentencepiece_joins_byte_pieces(subword):
    ids = subword._tokenizer.encode("a \U0001F600 b".encode())  # the emoji is 4 byte pieces
    printed = "".join(subword.stream_text(ids[i:i + 1]) for i in range(len(ids)))
    assert printed == "a \U0001F600 b"
    assert subword.stream_text(subword._tokenizer.encode(b" the")) == " the"  # \u2581 shown as a space


def test_render_samples_shows_the_first_stream_as_text():
    fe = TextFrontEnd(TextConfig(corpus="file"))
    tokens = np.stack([np.frombuffer(b"line one\nline two", dtype=np.uint8),
                       np.frombuffer(b"other stream.....", dtype=np.uint8)])  # [2, 17]
    media = fe.render_samples(tokens, step=5)
    ((tag, text),) = media.texts.items()
    assert tag == "samples/text" and "line one" in text and "line two" in text and "other" not in text
    assert not media.audio and not media.images


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="data.corpus='wiki'"):
        TextFrontEnd(TextConfig(corpus="wiki"))
    with pytest.raises(ConfigError, match="data.tokenizer='chars'"):
        TextFrontEnd(TextConfig(corpus="file", tokenizer="chars"))
    with pytest.raises(ConfigError, match="data.vocab"):
        build_frontend({"frontend": "text", "vocab": 10})
    assert TextConfig(corpus="pg19").tokenizer_kind == "sentencepiece"
    assert TextConfig(corpus="enwik8").tokenizer_kind == "bytes"
