"""ct_core.atomic_write: the reason of a failed write is found whatever the
library raised, nothing is left under the name, and a bug is not disguised
as a write failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ct_core.atomic_write import atomic_path, errno_of, make_dirs, write_text
from ct_core.errors import WriteError

#: Each library's writer under a 4 kB file size limit, in a child process.
CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np, soundfile as sf, torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from safetensors.torch import save_file
    from ct_core.atomic_write import atomic_path
    from ct_core.errors import WriteError

    def figure(tmp):
        fig = Figure(figsize=(8, 8)); FigureCanvasAgg(fig)
        fig.add_subplot().imshow(np.random.default_rng(0).random((200, 200)))
        fig.savefig(tmp, format="png")

    def npy(tmp):
        with open(tmp, "wb") as f:
            np.save(f, np.zeros(4000))

    writers = {
        "torch.save": lambda tmp: torch.save({"w": torch.zeros(4000)}, tmp),
        "safetensors": lambda tmp: save_file({"w": torch.zeros(4000)}, str(tmp)),
        "soundfile": lambda tmp: sf.write(tmp, np.zeros(8000), 8000, subtype="PCM_16", format="WAV"),
        "numpy": npy,
        "matplotlib": figure,
    }
    folder = Path(sys.argv[1])
    for name in writers:  # the earlier file of each name
        (folder / name).write_text("earlier")
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    found = {}
    for name, write in writers.items():
        try:
            with atomic_path(folder / name) as tmp:
                write(tmp)
            found[name] = "written"
        except WriteError as err:
            found[name] = str(err)
    print(json.dumps(found))
""")


def test_every_library_s_failed_write_is_one_line_with_the_reason(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    for name, message in found.items():
        assert message == (f"could not write {tmp_path / name} (File too large: over this process's file size "
                           "limit (ulimit -f) of 4,096 bytes); the earlier file there is unchanged"), name
        assert (tmp_path / name).read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(found)  # no temporary or probe file


def test_a_bug_in_the_writer_keeps_its_traceback(tmp_path):
    with pytest.raises(TypeError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text(3)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(WriteError) as err:
        write_text(tmp_path / "plain" / "sub" / "r.json", "{}")
    assert str(err.value) == (f"could not write {tmp_path / 'plain' / 'sub' / 'r.json'} (Not a directory: "
                              f"{tmp_path / 'plain'} is a file, not a folder); nothing was written there")


def test_errno_is_read_from_the_chain_and_from_library_text():
    class SafetensorError(Exception):
        pass

    assert errno_of(SafetensorError("Error while serializing: I/O error: File too large (os error 27)")) == 27
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as inner:
            raise RuntimeError("unexpected pos 576 vs 534") from inner
    except RuntimeError as outer:
        assert errno_of(outer) == 28
    assert errno_of(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")) is None


def test_modes_do_not_depend_on_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        make_dirs(tmp_path / "a" / "b")
        write_text(tmp_path / "a" / "b" / "f.txt", "x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "a" / "b").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "a" / "b" / "f.txt").stat().st_mode & 0o777) == "0o644"
