"""WikiText: the reader (zip, folder, md5), Transformer-XL's word vocabulary,
<eos>/<unk> handling, the vocabulary in the checkpoint, and ppl."""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pytest
import torch

from ct_core.errors import CheckpointError, ConfigError, DataError
from ct_text import wikitext
from ct_text.config import TextConfig
from ct_text.frontend import TextFrontEnd
from ct_text.tokenizer import tokenizer_from_state, tokenizer_state
from ct_text.vocabulary import EOS, UNK, WordVocabulary
from ct_text.wikitext import resolve_wikitext, wikitext_corpus
from tests.conftest import SHARED_DATA

SAMPLE = SHARED_DATA / "text" / "wikitext2_sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"{SAMPLE} not found (the shared WikiText sample)")


def normalised(text: str) -> str:
    """What decoding gives back: each line's words joined by single spaces, then a newline."""
    return "".join(" ".join(line.split()) + "\n" for line in io.StringIO(text, newline=None))


def small_splits(corpora) -> dict[str, str]:
    return {"train": corpora.wikitext_lines(12, 0), "valid": corpora.wikitext_lines(3, 1) + " Zed flies kites . \n",
            "test": corpora.wikitext_lines(3, 2)}


def frontend(root, tmp_path, vocab_size: int, corpus: str = "wikitext2", **kw) -> TextFrontEnd:
    return TextFrontEnd(TextConfig(corpus=corpus, root=str(root), vocab_size=vocab_size,
                                   cache_dir=str(tmp_path / "cache"), **kw))


# ----------------------------------------------------------------- vocabulary
def test_ids_are_eos_then_descending_count_with_ties_in_first_occurrence_order():
    train = b" b a c \n\n a d b \n e d \n"  # a 2, b 2, d 2, c 1, e 1: ties keep first appearance
    vocab = WordVocabulary.build([train])
    assert vocab.words == [EOS, "b", "a", "d", "c", "e", UNK]
    assert (vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (0, 6, 7)
    # Case is kept: "The" and "the" are two words.
    assert WordVocabulary.build([b"The the the\n"]).words == [EOS, "the", "The", UNK]


def test_unk_of_the_training_text_keeps_its_rank():
    vocab = WordVocabulary.build([b" x <unk> <unk> y <unk> \n x \n"])
    assert vocab.words == [EOS, "<unk>", "x", "y"] and vocab.unk_id == 1


def test_every_line_ends_in_eos_empty_ones_included_with_universal_newlines():
    vocab = WordVocabulary.build([b"a b c d e\n"])
    a, b, c, d, e = (vocab.index[w] for w in "abcde")
    # " a b \n" + a line of one space + "" (empty) + CRLF and CR line ends + a last line without newline.
    ids = vocab.encode(b" a b \n \n\nc\r\nd\re")
    assert ids.tolist() == [a, b, 0, 0, 0, c, 0, d, 0, e, 0]
    assert vocab.encode(b"").tolist() == []


def test_words_outside_the_vocabulary_become_unk_and_are_counted():
    vocab = WordVocabulary.build([b"a b\n"])
    ids, unknown = vocab.encode_counted(b"a zz b <unk> yy\n")
    assert ids.tolist() == [1, vocab.unk_id, 2, vocab.unk_id, vocab.unk_id, 0]
    assert unknown == 2  # a literal <unk> of the text is a known word


def test_round_trip_on_handmade_text(corpora):
    text = corpora.wikitext_lines(5, 3) + "  two\tspaces  here \r\nno newline at the end"
    vocab = WordVocabulary.build([text.encode()])
    ids = vocab.encode(text.encode())
    assert vocab.token_bytes(ids).decode() == normalised(text)
    assert np.array_equal(vocab.encode(vocab.token_bytes(ids)), ids)


@needs_sample
def test_round_trip_on_the_shared_sample():
    train = (SAMPLE / "wiki.train.tokens").read_bytes()
    vocab = WordVocabulary.build([train])
    assert vocab.vocab_size == 13_777 and vocab.words[:4] == [EOS, "the", UNK, ","]
    ids = vocab.encode(train)
    text = vocab.token_bytes(ids).decode()
    assert text == normalised(train.decode())
    assert np.array_equal(vocab.encode(text.encode()), ids)
    # WikiText's own layout is this text with a space at both ends of every line.
    assert "".join(f" {line} \n" if line else " \n" for line in text.split("\n")[:-1]).encode() == train
    valid = (SAMPLE / "wiki.valid.tokens").read_text()
    known = "".join(" ".join(w if w in vocab.index else UNK for w in line.split()) + "\n"
                    for line in io.StringIO(valid, newline=None))
    assert vocab.token_bytes(vocab.encode(valid.encode())).decode() == known


def test_serialized_vocabulary_round_trips_through_a_weights_only_checkpoint(tmp_path):
    vocab = WordVocabulary.build([" naïve café \n = Title = \n".encode()])
    path = tmp_path / "state.pt"
    torch.save(tokenizer_state(vocab), path)
    back = tokenizer_from_state(torch.load(path, weights_only=True))
    assert isinstance(back, WordVocabulary) and back.words == vocab.words and back.sha256 == vocab.sha256
    with pytest.raises(CheckpointError, match="word vocabulary is damaged"):
        tokenizer_from_state({"tokenizer": "words", "vocabulary": torch.tensor([120, 10], dtype=torch.uint8)})


# --------------------------------------------------------------------- reader
def test_zip_md5_mismatch_is_one_line_and_can_be_accepted(tmp_path, corpora, monkeypatch, caplog):
    path = corpora.zip_wikitext(tmp_path / "wikitext-103-v1.zip", small_splits(corpora))
    found = hashlib.md5(path.read_bytes()).hexdigest()
    corpus = wikitext_corpus(path, "wikitext103")
    with pytest.raises(DataError) as err:
        corpus.split("train")[0].read()
    assert str(err.value) == (
        f"{path}: md5 is {found}, expected 9ddaacaf6af0710eda8c456decff7832 ({path.stat().st_size:,} bytes); "
        "use the original wikitext-103-v1.zip or set data.accept_md5_mismatch=true to use it anyway")
    accepted = wikitext_corpus(path, "wikitext103", accept_md5_mismatch=True)
    assert accepted.split("valid")[0].read().decode() == small_splits(corpora)["valid"]
    assert "used anyway (data.accept_md5_mismatch=true)" in caplog.text
    monkeypatch.setattr(wikitext, "WIKITEXT103_MD5", found)  # the right file passes without the option
    assert wikitext_corpus(path, "wikitext103").split("test")[0].read().decode() == small_splits(corpora)["test"]


def test_wikitext2_zip_is_not_md5_checked(tmp_path, corpora):
    path = corpora.zip_wikitext(tmp_path / "wikitext-2-v1.zip", small_splits(corpora), folder="wikitext-2")
    assert wikitext_corpus(path, "wikitext2").split("train")[0].read().decode() == small_splits(corpora)["train"]


def test_zip_folder_and_nested_folder_give_the_same_tokens(tmp_path, corpora):
    splits = small_splits(corpora)
    flat = corpora.write_wikitext(tmp_path / "flat", splits)
    nested = corpora.write_wikitext(tmp_path / "outer" / "wikitext-2", splits).parent
    zipped = corpora.zip_wikitext(tmp_path / "holder" / "wikitext-2-v1.zip", splits, folder="wikitext-2")
    vocab = WordVocabulary.build([splits["train"].encode()]).vocab_size
    tokens = []
    for root in (flat, nested, zipped, zipped.parent):
        fe = frontend(root, tmp_path, vocab)
        tokens.append([np.asarray(fe.documents(s)[0]).tolist() for s in ("train", "valid", "test")])
    assert resolve_wikitext(nested, "wikitext2") == nested / "wikitext-2"
    assert resolve_wikitext(zipped.parent, "wikitext2") == zipped
    assert all(t == tokens[0] for t in tokens)


def test_layout_mistakes_are_one_line_errors(tmp_path, corpora):
    partial = corpora.write_wikitext(tmp_path / "partial", {"train": "a\n", "valid": "a\n"})
    with pytest.raises(DataError, match=r"^data.root=.*partial: wiki.test.tokens missing; expected wikitext-103-v1.zip"):
        resolve_wikitext(partial, "wikitext103")
    with pytest.raises(DataError, match="no such file or folder"):
        resolve_wikitext(tmp_path / "nope", "wikitext103")
    raw = corpora.make_zip(tmp_path / "wikitext-103-raw-v1.zip", b"text", member="wikitext-103-raw/wiki.train.raw")
    with pytest.raises(DataError, match="has no member named wiki.train.tokens.*the -raw- archives hold .raw files"):
        wikitext_corpus(raw, "wikitext103")
    with pytest.raises(ConfigError, match="data.root is not set; set data.root=/path/to/wikitext-103-v1.zip"):
        TextFrontEnd(TextConfig(corpus="wikitext103", vocab_size=10)).prepare(progress=False)


# ------------------------------------------------------------------ front end
def test_vocab_size_must_match_the_training_split(tmp_path, corpora):
    root = corpora.write_wikitext(tmp_path / "wt", small_splits(corpora))
    n = WordVocabulary.build([small_splits(corpora)["train"].encode()]).vocab_size
    with pytest.raises(ConfigError) as err:
        frontend(root, tmp_path, n + 1).prepare(progress=False)
    assert str(err.value) == (f"data.vocab_size={n + 1}: the training split of {root} gives {n:,} ids "
                              f"(its words, <eos> and <unk>); set data.vocab_size={n}")


def test_store_counts_unknown_words_and_metrics_are_ppl_over_every_token(tmp_path, corpora):
    splits = small_splits(corpora)
    root = corpora.write_wikitext(tmp_path / "wt", splits)
    vocab = WordVocabulary.build([splits["train"].encode()])
    fe = frontend(root, tmp_path, vocab.vocab_size)
    counts = {s: fe.counts(s) for s in ("train", "valid", "test")}
    assert counts["train"]["unknown"] == 0 and counts["valid"]["unknown"] == 3  # "Zed flies kites"
    n_lines = splits["valid"].count("\n")
    assert counts["valid"]["tokens"] == counts["valid"]["words"] + n_lines  # one <eos> per line
    m = fe.metrics(nll_sum=2.0 * 100, n_tokens=100, split="valid")
    assert m["nll"] == 2.0 and m["ppl"] == pytest.approx(math.exp(2.0))
    # Add-one unigram of the train tokens, over every predicted valid token (all but the first).
    train_ids, valid_ids = vocab.encode(splits["train"].encode()), vocab.encode(splits["valid"].encode())
    counts_w = np.bincount(train_ids, minlength=vocab.vocab_size)
    p = (counts_w + 1) / (counts_w.sum() + vocab.vocab_size)
    assert m["unigram_ppl"] == pytest.approx(math.exp(-np.log(p[valid_ids[1:]]).mean()), rel=1e-9)
    assert set(fe.metrics(1.0, 10, "valid", complete=False)) == {"nll", "ppl"}
    assert (fe.cache_dir / "text").is_dir() and list(fe.cache_dir.rglob("baselines.json"))


def test_checkpoint_state_decodes_and_prompts_without_corpus_or_cache(tmp_path, corpora, capsys):
    splits = small_splits(corpora)
    root = corpora.write_wikitext(tmp_path / "wt", splits)
    vocab = WordVocabulary.build([splits["train"].encode()])
    fe = frontend(root, tmp_path, vocab.vocab_size)
    fe.prepare(progress=False)
    path = tmp_path / "frontend.pt"
    torch.save(fe.state_dict(), path)
    state = torch.load(path, weights_only=True)
    elsewhere = TextFrontEnd(TextConfig(corpus="wikitext2", root=str(tmp_path / "gone"), vocab_size=3,
                                        cache_dir=str(tmp_path / "empty")), state)
    assert elsewhere.vocab_size == vocab.vocab_size and elsewhere.start_token() == 0
    request = elsewhere.SampleRequest(prompt="Ada eats Zorp\nBo  reads Quux Zorp")
    ids = elsewhere.encode_prompt(request)
    assert ids.tolist() == [vocab.index["Ada"], vocab.index["eats"], vocab.unk_id, 0,
                            vocab.index["Bo"], vocab.index["reads"], vocab.unk_id, vocab.unk_id]
    err = capsys.readouterr().err
    assert err == "note: 3 prompt word(s) not in the vocabulary, read as <unk>: 'Zorp', 'Quux'\n"
    # Streamed in pieces, the text is what decoding the whole gives.
    streamed = elsewhere.stream_text(ids[:2]) + elsewhere.stream_text(ids[2:5]) + elsewhere.stream_text(ids[5:])
    assert streamed == "Ada eats <unk>\nBo reads <unk> <unk>" == vocab.token_bytes(ids).decode()
    out = elsewhere.decode(ids[None, :], tmp_path / "s.txt", prompt_len=len(ids))
    assert out[0].read_text() == streamed
    assert not (tmp_path / "empty").exists()
