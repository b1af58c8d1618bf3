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
import math
import signal
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

from ct_core.cli.common import OneLineParser, user_errors
from ct_core.cli.output_paths import check_output_file, default_sample_out
from ct_core.errors import ConfigError

PROG = "ct-sample"
#: Most tokens one call generates per stream: a larger request is a typo
#: that would run for days (front ends state their own limits too).
MAX_NEW_TOKENS = 10_000_000
COMPILE_CHOICES = ("auto", "on", "off")
#: --kv-dtype choices -> torch dtype names (auto: the decoder's compute dtype).
KV_DTYPES = {"auto": None, "bf16": "bfloat16"}


def common_parser(add_help: bool) -> argparse.ArgumentParser:
    parser = OneLineParser(
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
                        help="output file (one stream) or folder (several streams; x.txt becomes folder x). "
                        "Default: a new samples/sample_<date>-<time> file (one stream) or folder in the "
                        "run folder of the checkpoint (the folder holding checkpoints/, else the checkpoint's "
                        "own folder); never an earlier sample's name")
    parser.add_argument("--batch", type=int, default=1, help="independent streams sampled together")
    parser.add_argument("--temperature", type=float, default=1.0, help=">= 0; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely (1: greedy)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, e.g. 0.95")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                        help="compile the CPU decoding step with inductor (tens of seconds, then faster tokens); "
                        "auto: for requests of at least 8192 tokens per stream. CUDA replays graphs instead")
    parser.add_argument("--kv-dtype", choices=tuple(KV_DTYPES), default="auto",
                        help="key/value cache dtype while sampling; auto: the model's compute dtype. bf16 halves "
                        "the cache and changes the numbers slightly (opt-in)")
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


def check_options(args: argparse.Namespace) -> None:
    """One-line errors for the front-end-independent options."""
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: must be at least 1")
    # `not x >= 0` also refuses NaN; infinity would divide every logit to 0.
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise ConfigError(f"--temperature {args.temperature}: must be a number >= 0 (0 is greedy)")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise ConfigError(f"--top-p {args.top_p}: must lie in (0, 1]")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: must be at least 1")


class CtrlC:
    """While active, Ctrl-C sets ``asked`` and sampling stops after the
    token being drawn (checked between tokens, in plain Python); a second
    Ctrl-C raises ``KeyboardInterrupt`` at once. An interrupt raised
    asynchronously could land inside the compiler's machinery of a compiled
    step, which does not always let it through."""

    def __init__(self) -> None:
        self.asked = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True

    def __enter__(self) -> "CtrlC":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


def run(argv: list[str]) -> list[Path]:
    import numpy as np
    import torch

    from ct_core.train.checkpoint import load_checkpoint
    from ct_core.data.frontend import frontend_class
    from ct_core.cli.run_setup import build_run, load_model
    from ct_core.model.sampling import generate, worth_compiling
    from ct_core.train.runtime import autocast_context, resolve_device

    first, _ = common_parser(add_help=False).parse_known_args(argv)
    payload = load_checkpoint(first.checkpoint)
    parser = common_parser(add_help=True)
    request_cls = frontend_class(payload["config"]["data"]["frontend"]).SampleRequest
    add_request_arguments(parser, request_cls)
    args = parser.parse_args(argv)
    request = request_from_args(request_cls, args)
    check_options(args)

    cfg, frontend = build_run(payload["config"], payload["frontend"])
    device = resolve_device(args.device, option="--device ")
    n_new = frontend.num_new_tokens(request)
    if n_new > MAX_NEW_TOKENS:
        raise ConfigError(f"{n_new:,} new tokens per stream asked for; at most {MAX_NEW_TOKENS:,} per call")
    # The destination is checked before any sampling, so a bad --out costs nothing.
    out = args.out if args.out is not None else default_sample_out(args.checkpoint)
    if args.out is None and args.batch == 1:
        out = out.with_suffix(frontend.sample_suffix)
    targets = frontend.sample_paths(out, args.batch)
    for target in targets:
        check_output_file(target, "--out", replace=True, keep=[args.checkpoint])
    model = load_model(args.checkpoint, payload, cfg, frontend).to(device)
    prompt = np.asarray(frontend.encode_prompt(request), dtype=np.int64)
    # Without a prompt, generation starts from the front end's start token,
    # which is not part of the sample (an audio file holds exactly --seconds).
    skip = 0
    if prompt.size == 0:
        prompt, skip = np.array([frontend.start_token()], dtype=np.int64), 1
    prompt_t = torch.as_tensor(prompt, device=device)[None, :].repeat(args.batch, 1)  # [B, P]
    generator = torch.Generator(device=device).manual_seed(args.seed)
    memory = model.empty_memory(args.batch, cfg.eval_mem_len, cfg.eval_cmem_len, device=device)

    # Text streams to the terminal as it is drawn; audio shows a progress bar.
    stream = args.batch == 1 and frontend.stream_text(np.zeros(0, dtype=np.int64)) is not None
    drawn: list[torch.Tensor] = []  # new token columns [B], kept if sampling is interrupted
    ctrl_c = CtrlC()

    def take(column: torch.Tensor) -> None:
        drawn.append(column)
        if stream:
            sys.stdout.write(frontend.stream_text(column.cpu().numpy()) or "")
            sys.stdout.flush()
        if ctrl_c.asked:
            raise KeyboardInterrupt

    if stream:
        sys.stdout.write(frontend.stream_text(prompt) or "")
    compile_step = {"auto": None, "on": True, "off": False}[args.compile]
    if device.type == "cpu" and (compile_step or (compile_step is None and worth_compiling(device, n_new))):
        print(f"{PROG}: compiling the decoding step first (--compile off skips it)", file=sys.stderr)
    kv_dtype = getattr(torch, KV_DTYPES[args.kv_dtype]) if KV_DTYPES[args.kv_dtype] else None
    start = time.perf_counter()
    interrupted = False
    try:
        with ctrl_c, autocast_context(device, cfg.trainer.precision):
            generate(model, prompt_t, n_new, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, generator=generator, memory=memory, callback=take, progress=not stream,
                     compile=compile_step, kv_dtype=kv_dtype, notify=lambda line: print(f"{PROG}: {line}",
                                                                                          file=sys.stderr))
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - start
    if stream:
        sys.stdout.write("\n")
    if interrupted and not drawn:
        print(f"{PROG}: interrupted before the first token; nothing written", file=sys.stderr)
        sys.exit(130)
    new = [torch.stack(drawn, dim=1).to(prompt_t.dtype)] if drawn else []  # --tokens 0 draws none
    tokens = torch.cat([prompt_t, *new], dim=1)[:, skip:]  # [B, P + N]
    paths = frontend.decode(tokens.cpu().numpy(), out, prompt_len=prompt.size - skip)
    if interrupted:
        where = targets[0] if len(targets) == 1 else targets[0].parent
        print(f"{PROG}: interrupted: wrote {len(drawn):,} of {n_new:,} tokens per stream (partial) to {where}",
              file=sys.stderr)
        sys.exit(130)
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
