"""ct-export never overwrites a checkpoint or an unrelated file, writes only
``.safetensors`` names, and reports bad output paths in one line."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.reliability.conftest import assert_one_line_error, read_only, run_unprivileged


def test_output_equal_to_the_input_checkpoint_is_refused(checkpoint):
    before = checkpoint.read_bytes()
    proc = run_cli("ct-export", str(checkpoint), str(checkpoint), check=False)
    assert_one_line_error(proc, "last.pt")
    assert checkpoint.read_bytes() == before
    assert torch.load(checkpoint, weights_only=True)["step"] == 12


def test_an_existing_file_needs_force(checkpoint, tmp_path):
    other = tmp_path / "notes.safetensors"
    other.write_text("an unrelated file")
    proc = run_cli("ct-export", str(checkpoint), str(other), check=False)
    assert_one_line_error(proc, "notes.safetensors", "--force")
    assert other.read_text() == "an unrelated file"

    run_cli("ct-export", str(checkpoint), str(other), "--force")
    assert load_file(other).keys() == torch.load(checkpoint, weights_only=True)["model"].keys()


def test_a_checkpoint_is_never_replaced_even_with_force(checkpoint, tmp_path):
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(checkpoint.read_bytes())  # a checkpoint under a misleading name
    proc = run_cli("ct-export", str(checkpoint), str(victim), "--force", check=False)
    assert_one_line_error(proc, "victim.safetensors", "checkpoint")
    assert victim.read_bytes() == checkpoint.read_bytes()


def test_the_output_must_be_named_safetensors(checkpoint, tmp_path):
    proc = run_cli("ct-export", str(checkpoint), str(tmp_path / "out.pt"), check=False)
    assert_one_line_error(proc, "out.pt", ".safetensors")
    assert not (tmp_path / "out.pt").exists()


def test_an_existing_folder_is_one_line(checkpoint, tmp_path):
    folder = tmp_path / "exports.safetensors"
    folder.mkdir()
    proc = run_cli("ct-export", str(checkpoint), str(folder), check=False)
    assert_one_line_error(proc, "exports.safetensors", "folder")


def test_a_path_under_a_file_is_one_line(checkpoint, tmp_path):
    (tmp_path / "plain").write_text("x")
    proc = run_cli("ct-export", str(checkpoint), str(tmp_path / "plain" / "m.safetensors"), check=False)
    assert_one_line_error(proc, "plain", "not a folder")


def test_a_read_only_folder_is_one_line(checkpoint, tmp_path):
    folder = read_only(tmp_path / "ro")
    proc = run_unprivileged("ct-export", str(checkpoint), str(folder / "m.safetensors"))
    assert_one_line_error(proc, "ro", "ermission denied")
    assert list(folder.iterdir()) == []
