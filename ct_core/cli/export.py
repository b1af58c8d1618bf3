"""``ct-export``: write a checkpoint's weights as safetensors.

    ct-export outputs/audio/demo/<time>/checkpoints/last.pt demo.safetensors

The resolved recipe travels in the file's metadata (key ``config``, JSON).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ct_core.cli.common import user_errors

PROG = "ct-export"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write the model weights of a ct-train checkpoint as a .safetensors file.",
        epilog="example: ct-export runs/demo/checkpoints/last.pt demo.safetensors",
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    with user_errors(PROG):
        from ct_core.train.checkpoint import export_safetensors

        path = export_safetensors(args.checkpoint, args.out)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
