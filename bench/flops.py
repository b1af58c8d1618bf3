"""Executed FLOPs per token of a training step and of a decoding step,
counted from the shape alone, part by part.

:func:`bench.shapes.model_flops_per_token` is the MFU numerator: the same
formula for every implementation. The counts here are what this code
executes on its dense (CPU) attention path: every matmul, batched matmul,
convolution and attention kernel, forward and backward, including the
position scores against ``[0; R]`` (one column more than the keys), the
keys and values of the memories projected every segment, the position
projection ``W_r R`` (once per forward, so it depends on the batch), the
compressor and the compression loss; not the norms, softmax, element-wise
work or the optimizer. A matmul ``[m, k] @ [k, n]`` counts ``2·m·k·n``;
in the backward each input that needs a gradient costs one more such
product, as autograd executes it. SDPA's backward counts five products
(the scores recomputed, then the four gradients), as
``torch.utils.flop_counter`` counts it.

:func:`counted_flops` measures the same with ``FlopCounterMode`` (plus the
CPU flash-attention kernels, which it does not know); the tests check that
both agree exactly.

Example::

    python -m bench.flops                     # shapes S and M
    train_flops(get_shape("S")).total         # FLOPs per trained token
    decode_flops(get_shape("S")).total        # FLOPs per sampled token (batch 1)
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bench.shapes import SHAPES, Shape, get_shape
from ct_core.model.decode_step import bucket_for, key_buckets


@dataclass(frozen=True)
class FlopCount:
    """Executed FLOPs of one step by part, and the tokens it handles."""

    parts: dict[str, int]
    tokens: int

    @property
    def total(self) -> float:
        """FLOPs per token."""
        return sum(self.parts.values()) / self.tokens

    def per_token(self, part: str) -> float:
        return self.parts[part] / self.tokens


def _compressor_flops(shape: Shape, batch: int, n_slots: int) -> tuple[int, int, int]:
    """f_c on ``n_slots`` evicted slots (a multiple of c) of every row:
    forward FLOPs per layer, and the backward FLOPs per layer of its
    weights' gradients (its input is detached) and of its input's gradient."""
    d, c = shape.d_model, shape.compression_rate
    groups = n_slots // c
    if shape.compression == "conv":  # kernel = stride = c
        conv = 2 * batch * groups * d * d * c
        return conv, conv, 0
    if shape.compression == "dilated_conv":  # n causal kernel-2 layers, each over every slot
        n_layers = max(1, math.ceil(math.log2(2 * c)))
        conv = 2 * batch * n_slots * d * d * 2
        # Layer 0 reads the detached slots; the later layers also pass a gradient to their input.
        return n_layers * conv, n_layers * conv, (n_layers - 1) * conv
    return 0, 0, 0  # pooling and most_used: no matmuls


def train_flops(shape: Shape, batch_size: int | None = None) -> FlopCount:
    """Executed FLOPs of one training step (forward, compression and its
    loss, backward of CE + compression loss) with full segments of
    ``seq_len`` tokens, at ``batch_size`` rows (default: the shape's)."""
    b = shape.batch_size if batch_size is None else batch_size
    n_layers, d, f, v = shape.n_layers, shape.d_model, shape.d_ff, shape.vocab_size
    t, k = shape.seq_len, shape.n_keys
    rows = b * t  # query rows
    parts = {
        # q from the segment, k and v from [cmem; mem; segment]; forward + grads of input and weight.
        "projections": n_layers * 3 * (2 * rows * d * d + 2 * b * k * d * 2 * d),
        # W_r R once per forward; R needs no gradient.
        "positions": n_layers * 2 * (2 * k * d * d),
        # Position scores against [0; R] (K + 1 columns), content scores, A·V; x3 for the backward.
        "attention": n_layers * 3 * (2 * rows * d * (k + 1) + 2 * rows * d * k + 2 * rows * k * d),
        "output_and_ff": n_layers * 3 * (2 * rows * d * d + 2 * 2 * rows * d * f),
        "head": 3 * 2 * rows * d * v,
    }
    if shape.cmem_len > 0:
        n_slots = math.ceil(t / shape.compression_rate) * shape.compression_rate
        groups = n_slots // shape.compression_rate
        fwd, bwd_weight, bwd_input = _compressor_flops(shape, b, n_slots)
        trained = shape.compression_loss != "none"
        parts["compressor"] = n_layers * (fwd + (bwd_weight + bwd_input if trained else 0))
        if shape.compression_loss == "attention":
            # Target: the segment's queries over the T evicted keys/values (the
            # forward's, no projection), without gradients.
            target = sdpa_flop_count((b, 1, t, d), (b, 1, t, d), (b, 1, t, d))
            # Reconstruction: keys/values of f_c(old), attention, and W_o once,
            # on the difference from the target (weights detached: their
            # backward passes a gradient to their input only).
            kv = 2 * b * groups * d * 2 * d
            recon = 2 * kv + 2 * (2 * rows * d * d)
            recon += sdpa_flop_count((b, 1, t, d), (b, 1, groups, d), (b, 1, groups, d))
            recon += sdpa_backward_flop_count((b, 1, t, d), (b, 1, t, d), (b, 1, groups, d), (b, 1, groups, d))
            parts["compression_loss"] = n_layers * (target + recon)
        elif shape.compression_loss == "autoencoding":  # transposed conv back to T' slots; input and weight grads
            parts["compression_loss"] = n_layers * 3 * (2 * b * groups * d * d * shape.compression_rate)
    return FlopCount(parts, rows)


def decode_flops(shape: Shape, batch_size: int = 1, fixed_shape: bool = False) -> FlopCount:
    """Executed FLOPs of sampling one segment of ``seq_len`` tokens, one
    token per step, at ``batch_size`` rows, with full memories: the steps
    (token ``s`` attends ``C + M + s + 1`` keys; ``fixed_shape``: the
    smallest key-length bucket holding them, as the fixed-shape step does),
    plus what every segment costs once: the memories' keys and values
    projected for the next segment and the compression. Not counted: the
    one-off projection of the positions when the decoder is built, and the
    prompt."""
    b, n_layers, d, f, v = batch_size, shape.n_layers, shape.d_model, shape.d_ff, shape.vocab_size
    t, prefix = shape.seq_len, shape.cmem_len + shape.mem_len
    buckets = key_buckets(shape.n_keys)
    keys = [bucket_for(prefix + s + 1, buckets) if fixed_shape else prefix + s + 1 for s in range(t)]
    # A lone query: position scores (the variable-shape path against [0; R],
    # one column more; the fixed-shape step against distances 0 .. K_b - 1),
    # content, A·V.
    extra = 0 if fixed_shape else 1
    parts = {
        "projections": n_layers * t * (2 * b * d * d + 2 * b * d * 2 * d),
        "attention": n_layers * sum(2 * b * d * (n + extra) + 2 * b * d * n + 2 * b * n * d for n in keys),
        "output_and_ff": n_layers * t * (2 * b * d * d + 2 * 2 * b * d * f),
        "head": t * 2 * b * d * v,
        "memory_kv": n_layers * 2 * b * prefix * d * 2 * d,
    }
    if shape.cmem_len > 0:
        n_slots = math.ceil(t / shape.compression_rate) * shape.compression_rate
        parts["compressor"] = n_layers * _compressor_flops(shape, b, n_slots)[0]
    return FlopCount(parts, b * t)


def _cpu_flash_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs ``fn()`` executes by ``FlopCounterMode``, with SDPA's CPU
    flash kernels counted like its GPU kernels (the counter skips them)."""
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def report(shape: Shape) -> str:
    """Markdown lines: FLOPs per token by part, training and decoding."""
    train, decode = train_flops(shape), decode_flops(shape)
    lines = [f"{shape.describe()}", "", "| part | training MFLOP/token | decoding MFLOP/token (batch 1) |",
             "|---|---:|---:|"]
    for part in sorted(set(train.parts) | set(decode.parts)):
        row = [f"{x.per_token(part) / 1e6:.2f}" if part in x.parts else "—" for x in (train, decode)]
        lines.append(f"| {part} | {row[0]} | {row[1]} |")
    lines.append(f"| **total** | **{train.total / 1e6:.2f}** | **{decode.total / 1e6:.2f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs="+", default=list(SHAPES), help="shapes S, M or a recipe's (demo, ...)")
    args = parser.parse_args(argv)
    print("\n\n".join(report(get_shape(name)) for name in args.shape))


if __name__ == "__main__":
    main()
