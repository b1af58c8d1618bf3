"""bench.flops: the executed FLOPs counted from the shape equal what
FlopCounterMode counts on a real training step and on a real decoded
segment, for every compression choice, pre- and post-LN, memories shorter
and longer than the segment, and at shape S itself."""

import pytest
import torch
import torch.nn.functional as F

from bench.flops import counted_flops, decode_flops, main, train_flops
from bench.shapes import SHAPES, Shape
from ct_core import CompressiveTransformerLM
from ct_core.model.memory import MemoryState
from ct_core.model.sampling import IncrementalDecoder


def small(**changes) -> Shape:
    base = dict(name="small", n_layers=2, d_model=32, n_heads=4, d_ff=48, seq_len=8, mem_len=12, cmem_len=6,
                compression_rate=4, batch_size=3, vocab_size=37)
    base.update(changes)
    return Shape(**base)


CASES = {
    "conv_attention": small(),
    "conv_attention_short_memory": small(mem_len=4, n_heads=2),
    "dilated_conv_attention": small(compression="dilated_conv", compression_rate=2),
    "conv_autoencoding": small(compression_loss="autoencoding"),
    "conv_bptt": small(compression_loss="bptt"),
    "mean_pool": small(compression="mean_pool", compression_loss="none"),
    "most_used": small(compression="most_used", compression_loss="none"),
    "transformer_xl": small(cmem_len=0, compression_loss="none"),
    "no_memory": small(mem_len=0, cmem_len=0, compression_loss="none"),
    "batch_1": small(batch_size=1, tie_embeddings=True),
}


def build(shape: Shape, norm: str = "pre") -> CompressiveTransformerLM:
    torch.manual_seed(0)
    cfg = shape.model_config()
    cfg.norm = norm
    return CompressiveTransformerLM(cfg)


def training_step_flops(shape: Shape, norm: str = "pre") -> int:
    """One training step after a warm-up segment (memories filled)."""
    model = build(shape, norm).train()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, shape.vocab_size, (shape.batch_size, 2 * shape.seq_len + 1), generator=g)
    t = shape.seq_len
    memory = model(tokens[:, :t]).memory

    def step():
        out = model(tokens[:, t : 2 * t], memory)
        loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, t + 1 : 2 * t + 1].flatten())
        (loss + out.aux_loss).backward()

    return counted_flops(step)


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_count_equals_the_flop_counter(name):
    shape = CASES[name]
    expected = train_flops(shape)
    assert counted_flops_per_token(training_step_flops(shape), shape) == expected.total


def counted_flops_per_token(flops: int, shape: Shape) -> float:
    return flops / (shape.batch_size * shape.seq_len)


def test_post_ln_executes_the_same_flops():
    shape = CASES["conv_attention"]
    assert counted_flops_per_token(training_step_flops(shape, "post"), shape) == train_flops(shape).total


def test_training_count_at_shape_s():
    shape = SHAPES["S"].replace(batch_size=1)
    assert counted_flops_per_token(training_step_flops(shape), shape) == train_flops(shape).total
    # The position projection is per forward: more rows share it.
    assert train_flops(SHAPES["S"]).total < train_flops(shape).total


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize("name", ["conv_attention", "dilated_conv_attention", "most_used", "transformer_xl"])
def test_decoding_count_equals_the_flop_counter(name, fixed_shape):
    """A decoder with full memories fed one segment of single tokens: every
    step plus the segment's memory update and the next segment's keys and
    values."""
    shape = CASES[name]
    model = build(shape).eval()
    empty = model.empty_memory(shape.batch_size)
    full = MemoryState(empty.mem, torch.ones_like(empty.mem_mask), empty.cmem, torch.ones_like(empty.cmem_mask))
    with torch.inference_mode():
        dec = IncrementalDecoder(model, shape.batch_size, full, fixed_shape=fixed_shape)
    tokens = torch.randint(0, shape.vocab_size, (shape.batch_size, shape.seq_len),
                           generator=torch.Generator().manual_seed(2))

    def segment():
        for s in range(shape.seq_len):
            dec.feed(tokens[:, s : s + 1])

    flops = counted_flops(segment)
    assert dec.pos == 0  # the segment rolled over into the memories
    expected = decode_flops(shape, shape.batch_size, fixed_shape=fixed_shape)
    assert counted_flops_per_token(flops, shape) == expected.total


def test_report_lists_every_part(capsys):
    main(["--shape", "S", "M"])
    text = capsys.readouterr().out
    for part in ("projections", "attention", "compression_loss", "memory_kv", "**total**"):
        assert part in text
    assert f"**{train_flops(SHAPES['M']).total / 1e6:.2f}**" in text
