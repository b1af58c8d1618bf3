"""``ct-sample``: sample from a checkpoint with the cached incremental decoder.

The checkpoint decides the modality; its front end adds its own options and
writes the output (WAV + spectrogram for audio, text for text)::

    ct-sample outputs/audio/demo/<time>/checkpoints/last.pt --seconds 3 --out demo.wav
    ct-sample runs/demo/checkpoints/last.pt --prime speech.wav --prime-seconds 1 --batch 4 --out samples/

An existing file at ``--out`` (an earlier sample) is replaced only with
``--force``, like ``ct-export``; the checkpoint never is.
    ct-sample runs/shakespeare/checkpoints/last.pt --prompt "ROMEO:" --tokens 400 --top-p 0.95
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
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
#: Names of the files ct-sample reads: checkpoints and exports.
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
COMPILE_CHOICES = ("auto", "on", "off")
#: --kv-dtype choices -> torch dtype names (auto: the decoder's compute dtype).
KV_DTYPES = {"auto": None, "bf16": "bfloat16"}


def common_parser(add_help: bool) -> argparse.ArgumentParser:
    from ct_core.model.sampling import COMPILE_MIN_TOKENS

    parser = OneLineParser(
        prog=PROG,
        add_help=add_help,
        description="Sample from a ct-train checkpoint. Options after the checkpoint depend on its "
        "modality: run `ct-sample CHECKPOINT --help` to see them.",
        epilog="examples:\n  ct-sample runs/demo/checkpoints/last.pt --seconds 3 --out demo.wav\n"
        "  ct-sample runs/text/checkpoints/last.pt --prompt 'The war' --tokens 400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a .pt file written by ct-train, or its ct-export .safetensors")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file (one stream) or folder (several streams; x.txt becomes folder x). "
                        "Default: a new samples/sample_<date>-<time> file (one stream) or folder in the "
                        "run folder of the checkpoint (the folder holding checkpoints/, else the checkpoint's "
                        "own folder); never an earlier sample's name")
    parser.add_argument("--force", action="store_true",
                        help="replace existing files at --out (an earlier sample); never the checkpoint")
    parser.add_argument("--batch", type=int, default=1, help="independent streams sampled together")
    parser.add_argument("--temperature", type=float, default=1.0, help=">= 0; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely (1: greedy)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, e.g. 0.95")
    parser.add_argument("--seed", type=int, default=0, help="an integer in [0, 2^32), like trainer.seed")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                        help="compile the CPU decoding step with inductor (tens of seconds, then faster tokens); "
                        f"auto: for requests of at least {COMPILE_MIN_TOKENS} tokens per stream. "
                        "CUDA replays graphs instead")
    parser.add_argument("--kv-dtype", choices=tuple(KV_DTYPES), default="auto",
                        help="key/value cache dtype while sampling; auto: the model's compute dtype. bf16 halves "
                        "the cache and changes the numbers slightly (opt-in)")
    return parser


def _value_type(kind: Any) -> Any:
    """``str`` for ``str | None``: the type an option's value is read as."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    return kind


def add_request_arguments(parser: argparse.ArgumentParser, request_cls: type) -> None:
    """One ``--option`` per field of a front end's SampleRequest dataclass."""
    hints = typing.get_type_hints(request_cls)
    group = parser.add_argument_group(f"{request_cls.__doc__.strip().splitlines()[0].rstrip('.')}")
    for f in dataclasses.fields(request_cls):
        kind = _value_type(hints[f.name])
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
                           help=f.metadata.get("help"), metavar=f.metadata.get("metavar"))


def command_line_text(value: Any, option: str) -> Any:
    """A text option as the user typed it. Under an ASCII locale without
    Python's UTF-8 mode, non-ASCII arguments arrive as escaped bytes; they
    are decoded as UTF-8, which is what a terminal sends."""
    if not isinstance(value, str):
        return value
    try:
        return os.fsencode(value).decode("utf-8")
    except UnicodeError:
        raise ConfigError(f"{option}: not valid UTF-8 text; give the text in UTF-8 (or use a file)") from None


def request_from_args(request_cls: type, args: argparse.Namespace) -> Any:
    """The front end's SampleRequest from parsed arguments, validated."""
    hints = typing.get_type_hints(request_cls)
    values = {}
    for f in dataclasses.fields(request_cls):
        value = getattr(args, f.name)
        # A FILE keeps the bytes it came as, which is how the file system names it.
        if _value_type(hints[f.name]) is str and f.metadata.get("metavar") != "FILE":
            value = command_line_text(value, "--" + f.name.replace("_", "-"))
        values[f.name] = value
    request = request_cls(**values)
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
    if not 0 <= args.seed < 2**32:  # the range trainer.seed allows
        raise ConfigError(f"--seed {args.seed}: must be an integer in [0, 2^32)")


def find_checkpoint(argv: list[str]) -> Path:
    """The CHECKPOINT argument, before the front end's options are known:
    argparse takes the value of an option it does not know yet (``--seconds
    0.01``) for the positional, so the first argument naming an existing file
    wins, else the first one named like a checkpoint or export, else the first."""
    first, unknown = common_parser(add_help=False).parse_known_args(argv)
    candidates = [first.checkpoint] + [Path(a) for a in unknown if not a.startswith("-")]
    for test in (Path.is_file, lambda p: p.suffix.lower() in MODEL_SUFFIXES):
        found = next((p for p in candidates if test(p)), None)
        if found is not None:
            return found
    return first.checkpoint


def check_out_path(out: Path, given: bool) -> None:
    """An ``--out`` that exists but is neither a file nor a folder (a device
    such as /dev/null, a pipe) is refused: samples are files."""
    if given and out.exists() and not (out.is_file() or out.is_dir()):
        raise ConfigError(f"--out {out} is not a regular file or folder (a device or pipe); "
                          "name a file or folder to write the samples to")


def check_targets(files: list[Path], checkpoint: Path, given: bool, force: bool) -> None:
    """Every sample file (spectrograms beside WAVs included) can be written,
    an existing one only with ``--force``; without ``--out`` the error says
    that the default place failed and how to choose another."""
    try:
        for path in files:
            check_output_file(path, "--out", replace=force, keep=[checkpoint])
    except ConfigError as err:
        if given:
            raise
        reason = str(err).split(": ", 1)[-1]
        folder = files[0].parent
        raise ConfigError(f"no --out given, and the default place {folder} cannot take the sample ({reason}); "
                          "give --out FILE") from None


def check_stream_memory(cfg, weights: dict, batch: int, prompt_len: int, n_new: int, device,
                        kv_dtype_name: str | None) -> None:
    """One line, before anything is loaded, sampled or written, when the
    model (``weights``: its state dict) and the ``--batch`` streams need more
    memory than ``device`` has available."""
    import torch

    from ct_core.model.sampling_memory import available_bytes, check_fits, sampling_bytes
    from ct_core.train.runtime import autocast_context

    param_dtype = torch.get_default_dtype()  # the model is built, and its checkpoint loaded, in it
    with autocast_context(device, cfg.trainer.precision):
        on = torch.is_autocast_enabled(device.type)
        compute_dtype = torch.get_autocast_dtype(device.type) if on else param_dtype
    # Without a prompt, generation starts from one start token.
    kv_dtype = getattr(torch, kv_dtype_name) if kv_dtype_name else None
    need = sampling_bytes(cfg.model, batch, cfg.eval_mem_len, cfg.eval_cmem_len, max(prompt_len, 1), n_new,
                          param_dtype, compute_dtype, kv_dtype)
    weight_bytes = sum(t.numel() * param_dtype.itemsize for t in weights.values() if torch.is_tensor(t))
    check_fits(need, weight_bytes, available_bytes(device), str(device), batch, "--batch")


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

    from ct_core.data.frontend import frontend_class
    from ct_core.train.model_loading import build_model, build_run, read_model_file
    from ct_core.model.sampling import generate, worth_compiling
    from ct_core.train.runtime import autocast_context, resolve_device

    payload = read_model_file(find_checkpoint(argv))
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
    prompt = np.asarray(frontend.encode_prompt(request), dtype=np.int64)
    check_stream_memory(cfg, payload["model"], args.batch, prompt.size, n_new, device, KV_DTYPES[args.kv_dtype])
    # The destination is checked before any sampling, so a bad --out costs nothing.
    given = args.out is not None
    out = args.out if given else default_sample_out(args.checkpoint)
    check_out_path(out, given)
    if not given and args.batch == 1:
        out = out.with_suffix(frontend.sample_suffix)
    targets = frontend.sample_paths(out, args.batch)
    files = [path for target in targets
             for path in (target, *(target.with_suffix(s) for s in frontend.companion_suffixes))]
    check_targets(files, args.checkpoint, given, args.force)
    model = build_model(args.checkpoint, payload, cfg).to(device)
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
