"""Peak memory: against the attended span ``mem_len + cmem_len``, against
history length (segments trained or decoded; must not grow), and ours vs
the peers in training at the same shape.

Every configuration runs in a fresh child process that reads its own peak
resident set size (``VmHWM`` in ``/proc/self/status``) at checkpoints; on
CUDA it also reports ``torch.cuda.max_memory_allocated``. The parent's
``ru_maxrss`` or ``tracemalloc`` would be wrong here: the first holds the
largest configuration run so far, the second does not see torch's
allocations. An idle child (torch and ct_core imported, nothing built) gives
the baseline that "above idle" subtracts.

    python -m bench.memory_usage             # ~5 min on 2 CPU cores
    python -m bench.memory_usage --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from bench.report import REPO, environment_header, markdown_table, write_results
from bench.shapes import Shape, get_shape

MIB = 2**20
SPANS = [(0, 0), (128, 128), (256, 256), (512, 512), (1024, 1024)]  # (mem_len, cmem_len) at shape S
#: Quadrupling the history may raise the peak by this share of the footprint
#: above idle and still count as "does not grow" (allocator settling, not a leak).
FLAT_SHARE = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON spec: run one configuration and print JSON
    p.add_argument("--peer-shapes", nargs="+", default=["S", "M"])
    p.add_argument("--contenders", nargs="+", default=["ours", "ctp", "ctp-trainable", "xtransformers"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="shorter histories, peers at S only")
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


# ------------------------------------------------------------------- child
def peak_bytes(device: torch.device) -> int:
    """This process's peak memory: GPU allocations on CUDA, else the resident high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def run_configuration(spec: dict) -> dict:
    """Inside the child: build, run, and return the peak at each checkpoint."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    import ct_core.model.lm  # noqa: F401  (the idle baseline includes the package)

    if spec["kind"] == "idle":
        return {"peaks": [peak_bytes(device)]}
    shape = Shape(**spec["shape"])
    peaks = []
    if spec["kind"] == "train":
        from bench.peers import build_contender
        from bench.train_throughput import make_step

        step = make_step(build_contender(spec["contender"], shape, device), shape, device, bf16=False)
        for k in range(1, max(spec["checkpoints"]) + 1):
            step()
            if k in spec["checkpoints"]:
                peaks.append(peak_bytes(device))
    else:  # decode, one token at a time; checkpoints count whole segments
        from ct_core.model.lm import CompressiveTransformerLM
        from ct_core.model.sampling import IncrementalDecoder

        torch.manual_seed(0)
        model = CompressiveTransformerLM(shape.model_config()).to(device).eval()
        dec = IncrementalDecoder(model, shape.batch_size)
        token = torch.zeros(shape.batch_size, 1, dtype=torch.long, device=device)
        for k in range(1, max(spec["checkpoints"]) + 1):
            for _ in range(shape.seq_len):
                token = dec.feed(token)[:, -1].argmax(dim=-1, keepdim=True)
            if k in spec["checkpoints"]:
                peaks.append(peak_bytes(device))
    return {"peaks": peaks}


def run_child(spec: dict) -> dict:
    """Run one configuration in a fresh interpreter and parse its answer."""
    proc = subprocess.run([sys.executable, "-m", "bench.memory_usage", "--child", json.dumps(spec)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child failed ({proc.returncode}): {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ parent
def mib(x: float) -> str:
    return f"{x / MIB:,.0f}"


def spec_for(kind: str, shape: Shape, args: argparse.Namespace, **extra) -> dict:
    return {"kind": kind, "shape": dataclasses.asdict(shape), "threads": args.threads, "device": args.device, **extra}


def span_section(base: int, args: argparse.Namespace) -> list[str]:
    shape = get_shape("S")
    rows = []
    for mem, cmem in SPANS:
        s = shape.replace(mem_len=mem, cmem_len=cmem)
        print(f"[memory] span mem {mem} + cmem {cmem}")
        train = run_child(spec_for("train", s, args, contender="ours", checkpoints=[3]))
        dec = run_child(spec_for("decode", s.replace(batch_size=1), args, checkpoints=[2]))
        cells = []
        for r in (train, dec):
            cells += [r["error"], ""] if "error" in r else [mib(r["peaks"][-1]), mib(r["peaks"][-1] - base)]
        rows.append([mem, cmem, mem + cmem, *cells])
    return [f"## Peak memory against mem_len + cmem_len (ours; shape S otherwise: {shape.describe()})", "",
            "Training: 3 full steps at batch 8. Decoding: 2 segments one token at a time at batch 1. MiB.", "",
            *markdown_table(["mem_len", "cmem_len", "span", "train peak", "train above idle", "decode peak",
                             "decode above idle"], rows)]


def history_section(base: int, args: argparse.Namespace) -> tuple[list[str], bool]:
    """Peaks after k segments; the last checkpoint is 4× the one before it."""
    shape = get_shape("S")
    train_points = [2, 8, 16, 64] if args.quick else [2, 8, 32, 128]
    decode_points = [1, 2, 4, 16] if args.quick else [1, 4, 8, 32]
    print("[memory] history")
    train = run_child(spec_for("train", shape, args, contender="ours", checkpoints=train_points))
    dec = run_child(spec_for("decode", shape.replace(batch_size=1), args, checkpoints=decode_points))
    lines = [f"## Peak memory against history length (ours, {shape.describe()})", "",
             "Peak resident memory of one process after k segments (the high-water mark so far), MiB. The "
             "allocator settles over the first tens of segments. Criterion: from the second-to-last checkpoint k "
             f"to the last (4k) the peak rises by at most {FLAT_SHARE:.0%} of the footprint above idle at k; "
             "memory held in proportion to history would triple whatever it had taken by k.", ""]
    flat = True
    for label, points, r in (("training steps", train_points, train),
                             ("decoded segments (batch 1)", decode_points, dec)):
        if "error" in r:
            lines += [f"- {label}: {r['error']}"]
            flat = False
            continue
        peaks = r["peaks"]
        late, footprint = peaks[-1] - peaks[-2], peaks[-2] - base
        flat &= late <= FLAT_SHARE * footprint
        lines += [*markdown_table([label, *map(str, points)], [["peak MiB", *map(mib, peaks)]]), "",
                  f"- growth from {points[0]} to {points[-1]}: {(peaks[-1] - peaks[0]) / MIB:+.1f} MiB; from "
                  f"{points[-2]} to {points[-1]}: {late / MIB:+.1f} MiB = {late / footprint:+.1%} of the "
                  f"{footprint / MIB:,.0f} MiB above idle", ""]
    return lines, flat


def peers_section(base: int, args: argparse.Namespace) -> list[str]:
    from bench.train_throughput import steady_state_steps

    lines = []
    for name in (["S"] if args.quick else args.peer_shapes):
        shape = get_shape(name)
        steps = steady_state_steps(shape) + 2  # every memory full, optimizer state allocated
        rows, ours = [], None
        for c in args.contenders:
            print(f"[memory] training peak {c} at {name}")
            r = run_child(spec_for("train", shape, args, contender=c, checkpoints=[steps]))
            if "error" in r:
                rows.append([c, r["error"], "", ""])
                continue
            above = r["peaks"][-1] - base
            ours = above if c == "ours" else ours
            rows.append([c, mib(r["peaks"][-1]), mib(above), f"{above / ours:.2f}" if ours else "—"])
        lines += [f"## Training peak memory, ours vs peers: {shape.describe()}", "",
                  f"Peak after {steps} full training steps (memories full), MiB.", "",
                  *markdown_table(["contender", "peak", "above idle", "above idle / ours"], rows), ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_configuration(json.loads(args.child))))
        return
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    header = environment_header("bench.memory_usage", device)
    idle = run_child({"kind": "idle", "threads": args.threads, "device": args.device})
    base = idle["peaks"][0] if "peaks" in idle else 0
    history, flat = history_section(base, args)
    body = [f"Idle child (torch + ct_core imported, nothing built): {mib(base)} MiB.", "",
            *span_section(base, args), "", *history, *peers_section(base, args), "## Targets", "",
            f"- peak memory does not grow with history (quadrupled history adds ≤ {FLAT_SHARE:.0%} of the "
            f"footprint): {'met' if flat else 'not met'}",
            "", "## Notes", "",
            "Peak = VmHWM of the child process, read inside it; on CUDA, torch.cuda.max_memory_allocated. The idle "
            "baseline imports torch and ct_core only; peer children also load their own package. The CPU was "
            "shared with other users' jobs during the run, which changes timings but not these peaks."]
    print("\n".join(body))
    if not args.no_write:
        path = write_results("memory_usage", device, args.threads, "Memory usage", header, body)
        print(f"[memory] wrote {path}")


if __name__ == "__main__":
    main()
