"""What the opt-in bf16 key/value cache costs and buys when sampling from a
trained checkpoint: bits per token on a validation split, and tokens/s.

- Cost: every validation document is fed through an
  :class:`~ct_core.model.sampling.IncrementalDecoder` (memories empty at
  each document's start, as ``ct-eval`` resets them), one segment at a
  time, with the cache in the compute dtype and in bf16; each token's
  logits score the next token. Bits per token (bits/sample for audio) =
  summed NLL ÷ predicted tokens ÷ ln 2.
- Speed: ``generate`` with each cache at the batches asked for (the step
  compiled with inductor on CPU, compiled during a warm-up, never timed),
  median of ``--rounds`` calls.

The checkpoint is any ``ct-train`` checkpoint or ``ct-export`` file; the
demo's::

    ct-train                                    # the demo recipe, ~10 min on 2 cores
    python -m bench.kv_cache_cost outputs/audio/demo/<time>/checkpoints/last.pt

The decoder, not ``ct-eval``'s batched forward, scores the tokens, so the
compute-dtype row is the reference the bf16 row is compared with (close
to ``ct-eval``'s number when the memory lengths are the training ones; the
segments are aligned differently).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import environment_header, fmt, markdown_table, write_results
from bench.timing import median
from ct_core.model.decode_step import MAX_CHUNK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a ct-train checkpoint or a ct-export file")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--max-tokens", type=int, default=200_000,
                   help="score at most this many tokens of the split (documents in order, the last one cut)")
    p.add_argument("--speed-tokens", type=int, default=2048, help="new tokens per stream in each timed generate")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compile", choices=("on", "off"), default="on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


@torch.inference_mode()
def split_bits(model, docs: list[np.ndarray], kv_dtype: torch.dtype | None) -> tuple[float, int]:
    """Bits per predicted token over ``docs`` through the decoder, and how many."""
    from ct_core.model.sampling import IncrementalDecoder

    nll, count = 0.0, 0
    for doc in docs:
        tokens = torch.as_tensor(doc, dtype=torch.long)[None]  # [1, n]
        dec = IncrementalDecoder(model, 1, kv_dtype=kv_dtype)
        for start in range(0, tokens.shape[1] - 1, model.cfg.seq_len):
            x = tokens[:, start : start + model.cfg.seq_len]
            y = tokens[:, start + 1 : start + 1 + model.cfg.seq_len]
            logits = dec.feed(x)[:, : y.shape[1]].float()  # [1, n, V]
            nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    return nll / max(count, 1) / math.log(2), count


def generate_rate(model, batch: int, n_new: int, kv_dtype: torch.dtype | None, compile_step: bool,
                  rounds: int) -> float:
    """Tokens/s of all streams, median over ``rounds`` generate calls."""
    from ct_core.model.sampling import generate

    start = torch.zeros(batch, 1, dtype=torch.long)
    kwargs = {"kv_dtype": kv_dtype, "compile": compile_step, "top_k": 50}
    generate(model, start, 2 * MAX_CHUNK, **kwargs)  # warm-up: compiles the chunk's step
    seconds = []
    for _ in range(rounds):
        t = time.perf_counter()
        generate(model, start, n_new, generator=torch.Generator().manual_seed(0), **kwargs)
        seconds.append(time.perf_counter() - t)
    return batch * n_new / median(seconds)


def load(path: Path, split: str, max_tokens: int):
    """The model, the split's documents (cut at ``max_tokens``) and the front end's name."""
    from ct_core.cli.run_setup import require_split
    from ct_core.train.model_loading import build_model, build_run, read_model_file

    payload = read_model_file(path)
    cfg, frontend = build_run(payload["config"], payload["frontend"])
    model = build_model(path, payload, cfg).eval()
    frontend.prepare(progress=False)
    docs, left = [], max_tokens + 1
    for doc in require_split(frontend, split, ""):
        if left <= 1:
            break
        docs.append(np.asarray(doc)[:left])
        left -= len(docs[-1])
    return model, docs, frontend.name


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    header = environment_header("bench.kv_cache_cost", device)
    model, docs, frontend = load(args.checkpoint, args.split, args.max_tokens)
    unit = "bits/sample" if frontend == "audio" else "bits/token"
    caches = [("compute dtype (fp32)", None), ("bf16 (--kv-dtype bf16)", torch.bfloat16)]
    rows, reference = [], None
    for name, kv in caches:
        print(f"[kv cache] {name}: scoring the {args.split} split")
        bits, count = split_bits(model, docs, kv)
        reference = bits if reference is None else reference
        rates = []
        for batch in args.batches:
            print(f"[kv cache] {name}: generate at batch {batch}")
            rates.append(generate_rate(model, batch, args.speed_tokens, kv, args.compile == "on", args.rounds))
        rows.append([name, f"{bits:.5f}", f"{bits - reference:+.5f}", *(fmt(r) for r in rates)])
    cfg = model.cfg
    body = [f"## {frontend} checkpoint `{args.checkpoint}`", "",
            f"{cfg.n_layers} layers, d_model {cfg.d_model}, seq/mem/cmem {cfg.seq_len}/{cfg.mem_len}/{cfg.cmem_len}; "
            f"{count:,} predicted tokens of the {args.split} split ({len(docs)} documents, memories empty at each "
            f"start), fed one segment at a time through the decoder; generate: {args.speed_tokens} new tokens per "
            f"stream, top-k 50, step compiled: {args.compile}, median of {args.rounds} calls.", "",
            *markdown_table(["key/value cache", f"{args.split} {unit}", "change", *(f"tokens/s, batch {b}"
                                                                             for b in args.batches)], rows), "",
            "The bf16 cache halves the bytes each decoding step reads from the cache; on a CPU without bf16 "
            "units the conversions cost about what the smaller reads save."]
    print("\n".join(body))
    if not args.no_write:
        path = write_results("kv_cache_cost", device, args.threads, "Cost of the bf16 key/value cache", header, body)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
