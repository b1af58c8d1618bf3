"""Per-GPU training memory of the paper recipes, estimated on a CPU.

What autograd keeps for the backward pass is counted with saved-tensor
hooks (unique storages, parameters excluded) during a training forward
under bf16 autocast, as the GPU recipes train: at the recipe's real widths
and lengths (seq_len, mem_len, cmem_len, heads, d_ff, vocabulary) and full
memories, for 1 and 2 layers and 1 and 2 lanes (models with the adaptive
softmax train on Zipf-distributed words, p(rank r) ~ 1/r, which puts more
targets in the rare clusters than real text does: what the output keeps
depends on how many targets fall in each cluster). The differences give the
bytes per layer and lane and per lane outside the layers; they scale
linearly to the recipe's depth and per-GPU batch:

    activations  = lanes x (n_layers x per_layer + outside)
    checkpointed = lanes x (n_layers x layer_input + outside) + lanes x per_layer
                   (each block keeps its input [T, D] fp32; one block is recomputed at a time)
    memories     = lanes x n_layers x (mem_len + cmem_len [+ seq_len pending, bptt]) x D x 4 bytes
    weights      = parameters x 16 bytes (fp32 weights, gradients, Adam's two moments)

Not counted: the backward pass's own temporaries (about one layer's
activations at a time), the allocator's fragmentation, CUDA context and
NCCL buffers (a few GB together). The attention path here is SDPA with an
additive bias; on CUDA the default is FlexAttention, which keeps the
unshifted position scores instead of the shifted bias: the same
[B, H, T, K] bf16 tensor per layer.

    python -m bench.activation_memory                 # ~2 min on 2 CPU cores
    python -m bench.activation_memory --gpus 8 --gpu-gib 80
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from bench.report import environment_header, markdown_table, write_results
from bench.shapes import Shape, get_shape

RECIPES = ("speech_ct", "speech_txl", "enwik8_ct", "enwik8_txl", "pg19_ct", "pg19_txl", "wt103_ct", "wt103_txl")
GIB = 2**30


def sample_tokens(shape: Shape, lanes: int) -> torch.Tensor:
    """``[lanes, seq_len + 1]`` token ids: uniform, or Zipf-distributed
    words for an adaptive softmax (ids are frequency ranks)."""
    if not shape.adaptive_cutoffs:
        return torch.randint(0, shape.vocab_size, (lanes, shape.seq_len + 1))
    zipf = 1.0 / torch.arange(1, shape.vocab_size + 1, dtype=torch.float64)
    return torch.multinomial(zipf, lanes * (shape.seq_len + 1), replacement=True).view(lanes, shape.seq_len + 1)


def saved_bytes(shape: Shape, n_layers: int, lanes: int) -> int:
    """Bytes autograd keeps from one training forward (bf16 autocast, full memories)."""
    from ct_core.model.lm import CompressiveTransformerLM

    torch.manual_seed(0)
    model = CompressiveTransformerLM(dataclasses.replace(shape.model_config(), n_layers=n_layers)).train()
    memory = model.empty_memory(lanes)
    for name in ("mem", "cmem", "pending"):
        if getattr(memory, name) is not None:
            getattr(memory, name).normal_()
    for name in ("mem_mask", "cmem_mask", "pending_mask"):
        if getattr(memory, name) is not None:
            getattr(memory, name).fill_(True)
    tokens = sample_tokens(shape, lanes)  # [lanes, seq_len + 1]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tokens[:, :-1], memory, targets=tokens[:, 1:])
        loss = out.nll.mean() + out.aux_loss
    del loss, out
    return sum(kept.values())


def estimate(shape: Shape) -> dict[str, float]:
    """Bytes per layer and lane, per lane outside the layers, and the rest."""
    from ct_core.model.lm import CompressiveTransformerLM

    m = {(n, b): saved_bytes(shape, n, b) for n in (1, 2) for b in (1, 2)}
    per_layer = (m[2, 2] - m[2, 1]) - (m[1, 2] - m[1, 1])
    outside = (m[1, 2] - m[1, 1]) - per_layer
    with torch.device("meta"):
        params = CompressiveTransformerLM(shape.model_config()).num_parameters()
    pending = shape.seq_len if shape.compression_loss == "bptt" and shape.cmem_len else 0
    return {"per_layer": per_layer, "outside": outside, "layer_input": shape.seq_len * shape.d_model * 4,
            "memories": shape.n_layers * (shape.mem_len + shape.cmem_len + pending) * shape.d_model * 4,
            "weights": params * 16.0, "params": params}


def per_gpu(e: dict[str, float], shape: Shape, lanes: int, checkpointing: bool) -> float:
    """Estimated bytes on one GPU training ``lanes`` lanes."""
    if checkpointing:
        act = lanes * (shape.n_layers * e["layer_input"] + e["outside"] + e["per_layer"])
    else:
        act = lanes * (shape.n_layers * e["per_layer"] + e["outside"])
    return act + lanes * e["memories"] + e["weights"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--gpus", type=int, default=8, help="GPUs the recipe's global batch is split over")
    p.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    header = environment_header("bench.activation_memory", device)
    rows = []
    for name in args.recipes:
        shape = get_shape(name)
        print(f"[activations] {shape.describe()}")
        e = estimate(shape)
        lanes = max(shape.batch_size // args.gpus, 1)
        plain, ckpt = per_gpu(e, shape, lanes, False), per_gpu(e, shape, lanes, True)
        whole_plain = per_gpu(e, shape, shape.batch_size, False)
        whole_ckpt = per_gpu(e, shape, shape.batch_size, True)

        def fits(total: float) -> str:
            return "yes" if total < args.gpu_gib * GIB else "**no**"

        rows.append([name, f"{e['params'] / 1e6:.1f} M", f"{e['per_layer'] / 2**20:,.0f}",
                     f"{e['outside'] / 2**20:,.0f}",
                     f"{(shape.n_layers * e['per_layer'] + e['outside']) / GIB:.2f}",
                     f"{shape.batch_size} / {lanes}", f"{plain / GIB:.1f} ({fits(plain)})", f"{ckpt / GIB:.1f}",
                     f"{whole_plain / GIB:.1f} ({fits(whole_plain)})", f"{whole_ckpt / GIB:.1f} ({fits(whole_ckpt)})"])
    body = [f"Estimated training memory per GPU, bf16 autocast, {args.gpus} GPUs sharing each recipe's global "
            f"batch (per-GPU lanes = batch / {args.gpus}), and the whole batch on one GPU; 'fits' against "
            f"{args.gpu_gib:.0f} GiB. Method and what is left out: see the module docstring of "
            "bench/activation_memory.py.", "",
            *markdown_table(["recipe", "parameters", "MiB per layer and lane", "MiB per lane outside layers",
                             "GiB activations per lane", "global / per-GPU lanes",
                             "GiB per GPU", "GiB per GPU, checkpointed", "GiB whole batch on one GPU",
                             "GiB whole batch, checkpointed"], rows)]
    print("\n".join(body))
    if not args.no_write:
        path = write_results("activation_memory", device, args.threads, "Training memory per GPU (estimate)",
                             header, body)
        print(f"[activations] wrote {path}")


if __name__ == "__main__":
    main()
