"""``ct-export``: write a checkpoint's weights as safetensors.

    ct-export outputs/audio/demo/<time>/checkpoints/last.pt demo.safetensors

The tensors are the model's ``state_dict()``; the metadata holds the
resolved recipe, the front end's state, the step and the package version
(:mod:`ct_core.train.export_format`), so ``ct-eval``, ``ct-sample`` and
``ct_core.load_model`` read the export as they read the checkpoint.
The output must be named ``*.safetensors``; an existing file is replaced
only with ``--force``, and a checkpoint never.
"""

from __future__ import annotations

from pathlib import Path

from ct_core.cli.common import OneLineParser, user_errors
from ct_core.cli.output_paths import check_output_file
from ct_core.errors import ConfigError

PROG = "ct-export"
SUFFIX = ".safetensors"


def export(checkpoint: Path, out: Path, force: bool) -> Path:
    """Check ``out``, then write it; every failure is one line."""
    from ct_core.train.checkpoint import export_safetensors

    if out.suffix.lower() != SUFFIX:
        raise ConfigError(f"OUT={out}: the export is a safetensors file; give it the {SUFFIX} suffix "
                          f"(ct-eval and ct-sample read the .pt checkpoint as well as its export)")
    check_output_file(out, "OUT", replace=force, keep=[checkpoint])
    # Atomic: a failed write is one line (file, reason) and leaves OUT as it was.
    return export_safetensors(checkpoint, out)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(
        prog=PROG,
        description="Write the model of a ct-train checkpoint as a .safetensors file: its weights, with the "
        "recipe and front-end state that rebuild it (ct-eval, ct-sample and ct_core.load_model read it).",
        epilog="example: ct-export runs/demo/checkpoints/last.pt demo.safetensors",
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a .pt file written by ct-train")
    parser.add_argument("out", type=Path, metavar="OUT", help=f"the file to write, named *{SUFFIX}")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists (never a checkpoint)")
    args = parser.parse_args(argv)
    with user_errors(PROG):
        path = export(args.checkpoint, args.out, args.force)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
