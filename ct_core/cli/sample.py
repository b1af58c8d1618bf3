"""``ct-sample``: sample from a checkpoint with the cached incremental decoder.

The checkpoint decides the modality; its front end adds its own options and
writes the output (WAV + spectrogram for audio, text for text)::

    ct-sample outputs/audio/demo/<time>/checkpoints/last.pt --seconds 3 --out demo.wav
    ct-sample runs/demo/checkpoints/last.pt --prime speech.wav --prime-seconds 1 --batch 4 --out samples/
    ct-sample runs/shakespeare/checkpoints/last.pt --prompt "ROMEO:" --tokens 400 --top-p 0.95
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

from ct_core.cli.common import user_errors
from ct_core.errors import ConfigError

PROG = "ct-sample"


def common_parser(add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        add_help=add_help,
        description="Sample from a ct-train checkpoint. Options after the checkpoint depend on its "
        "modality: run `ct-sample CHECKPOINT --help` to see them.",
        epilog="examples:\n  ct-sample runs/demo/checkpoints/last.pt --seconds 3 --out demo.wav\n"
        "  ct-sample runs/text/checkpoints/last.pt --prompt 'The war' --tokens 400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a .pt file written by ct-train")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file (one stream) or folder (default: <run>/samples/)")
    parser.add_argument("--batch", type=int, default=1, help="independent streams sampled together")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely (1: greedy)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, e.g. 0.95")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    return parser


def add_request_arguments(parser: argparse.ArgumentParser, request_cls: type) -> None:
    """One ``--option`` per field of a front end's SampleRequest dataclass."""
    hints = typing.get_type_hints(request_cls)
    group = parser.add_argument_group(f"{request_cls.__doc__.strip().splitlines()[0].rstrip('.')}")
    for f in dataclasses.fields(request_cls):
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
                           help=f.metadata.get("help"), metavar=f.metadata.get("metavar"))


def request_from_args(request_cls: type, args: argparse.Namespace) -> Any:
    """The front end's SampleRequest from parsed arguments, validated."""
    request = request_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(request_cls)})
    request.validate()
    return request


def run(argv: list[str]) -> list[Path]:
    import numpy as np
    import torch

    from ct_core.train.checkpoint import load_checkpoint
    from ct_core.data.frontend import frontend_class
    from ct_core.cli.run_setup import build_run, load_model
    from ct_core.model.sampling import generate
    from ct_core.train.runtime import autocast_context, resolve_device

    first, _ = common_parser(add_help=False).parse_known_args(argv)
    payload = load_checkpoint(first.checkpoint)
    parser = common_parser(add_help=True)
    request_cls = frontend_class(payload["config"]["data"]["frontend"]).SampleRequest
    add_request_arguments(parser, request_cls)
    args = parser.parse_args(argv)
    request = request_from_args(request_cls, args)
    if args.batch < 1:
        raise ConfigError(f"--batch={args.batch} must be at least 1")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise ConfigError(f"--top-p={args.top_p} must lie in (0, 1]")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k={args.top_k} must be at least 1")

    cfg, frontend = build_run(payload["config"], payload["frontend"])
    device = resolve_device(args.device, option="--device ")
    model = load_model(args.checkpoint, payload, cfg, frontend).to(device)
    prompt = np.asarray(frontend.encode_prompt(request), dtype=np.int64)
    if prompt.size == 0:
        prompt = np.array([frontend.start_token()], dtype=np.int64)
    n_new = frontend.num_new_tokens(request)
    prompt_t = torch.as_tensor(prompt, device=device)[None, :].repeat(args.batch, 1)  # [B, P]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    memory = model.empty_memory(args.batch, cfg.eval_mem_len, cfg.eval_cmem_len, device=device)

    # Text streams to the terminal as it is drawn; audio shows a progress bar.
    stream = args.batch == 1 and frontend.stream_text(np.zeros(0, dtype=np.int64)) is not None

    def show(column: torch.Tensor) -> None:
        sys.stdout.write(frontend.stream_text(column.cpu().numpy()) or "")
        sys.stdout.flush()

    if stream:
        sys.stdout.write(frontend.stream_text(prompt) or "")
    start = time.perf_counter()
    with autocast_context(device, cfg.trainer.precision):
        tokens = generate(model, prompt_t, n_new, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, generator=generator, memory=memory,
                          callback=show if stream else None, progress=not stream)
    seconds = time.perf_counter() - start
    if stream:
        sys.stdout.write("\n")
    out = args.out if args.out is not None else args.checkpoint.resolve().parent.parent / "samples"
    paths = frontend.decode(tokens.cpu().numpy(), out, prompt_len=prompt.size)
    print(frontend.speed_summary(n_new, args.batch, seconds), file=sys.stderr)
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return paths


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        common_parser(add_help=True).print_help()
        return
    with user_errors(PROG):
        run(argv)


if __name__ == "__main__":
    main()
