"""The README is the manual: its opening blocks are the install/test
commands, its Python example runs, and every recipe it names exists."""

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)


def test_opens_with_the_demo_and_the_test_blocks():
    bash = [body for lang, body in BLOCKS if lang == "bash"]
    assert bash[0].strip().endswith("pip install -e . && ct-train")
    assert bash[1].strip().endswith('pip install -e ".[dev]" && pytest')
    assert README.index(bash[0]) < README.index("## ")


def test_python_example_runs():
    code = next(body for lang, body in BLOCKS if lang == "python")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert tuple(namespace["seq"].shape) == (2, 25)
    assert tuple(namespace["memory"].cmem.shape) == (2, 2, 8, 64)


def test_every_experiment_named_exists():
    named = set(re.findall(r"experiment=([\w/]+)", README))
    assert named, "the README names experiments"
    for name in named:
        assert (REPO / "recipes" / "experiment" / f"{name}.yaml").is_file(), name


def test_every_command_named_is_installed():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for command in set(re.findall(r"\b(ct-[a-z]+)\b", README)):
        assert command in scripts, command
