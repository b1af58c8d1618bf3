"""The import rule: cli -> train -> data, model; model imports nothing above
it, data nothing of train or cli, and the core no front end. Checked on the
source, so a lazy import inside a function counts too."""

import ast
from pathlib import Path

import pytest

import ct_core

CORE = Path(ct_core.__file__).parent
#: package -> prefixes its modules must not import
FORBIDDEN = {
    "model": ("ct_core.data", "ct_core.train", "ct_core.cli", "ct_audio", "ct_text"),
    "data": ("ct_core.train", "ct_core.cli", "ct_audio", "ct_text"),
    "train": ("ct_core.cli", "ct_audio", "ct_text"),
    "cli": ("ct_audio", "ct_text"),
}
#: leaf modules every package may use
SHARED = {"__init__.py", "errors.py", "options.py", "atomic_write.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package):
    offenders = []
    for path in sorted((CORE / package).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(CORE)} imports {name}")
    assert not offenders


def test_every_core_module_lives_in_one_of_the_four_packages():
    loose = sorted(p.name for p in CORE.glob("*.py") if p.name not in SHARED)
    assert loose == []
    assert {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(FORBIDDEN)


def test_shared_leaf_modules_import_no_package_of_the_core():
    for name in SHARED - {"__init__.py"}:
        path = CORE / name
        if path.exists():
            assert not {m for m in imported_modules(path) if m.startswith("ct_core")} - {"ct_core.errors"}


def test_only_the_command_line_knows_argparse():
    """The front-end seam is typed (SampleRequest dataclasses); argparse
    stays in ct_core.cli."""
    roots = [CORE / "model", CORE / "data", CORE / "train"]
    roots += [Path(__import__(name).__file__).parent for name in ("ct_audio", "ct_text")]
    users = [str(path) for root in roots for path in root.rglob("*.py") if "argparse" in imported_modules(path)]
    assert users == []


@pytest.mark.parametrize("front_end,other", [("ct_audio", "ct_text"), ("ct_text", "ct_audio")])
def test_front_ends_never_import_each_other(front_end, other):
    root = Path(__import__(front_end).__file__).parent
    users = [str(p) for p in root.rglob("*.py") if any(m.split(".")[0] == other for m in imported_modules(p))]
    assert users == []
