"""What every command shares: recipe lookup, Hydra composition, and turning
user mistakes into one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from ct_core.errors import ConfigError, UserError


def recipes_dir() -> Path:
    """The installed recipes (``recipes/`` in a checkout)."""
    import ct_recipes

    return Path(ct_recipes.__file__).resolve().parent


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one line, like every other user
    error: ``prog: error: message (see prog --help)``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Print a :class:`UserError` as ``prog: error: message`` and exit 2."""
    try:
        yield
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def search_path_override(config_dir: str | None) -> list[str]:
    """The override that adds ``--config-dir`` to the recipe search path."""
    return [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []


def recipe_choices(group: str) -> list[str]:
    """Every recipe of ``group`` (``experiment`` -> ``audio/demo``, ...)."""
    folder = recipes_dir() / group
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


def unknown_recipe(missing: str) -> str:
    """``group=name is not a recipe; did you mean ...`` for Hydra's
    ``Could not find 'group/name'``: the closest names and the whole list."""
    parts = missing.split("/")
    for cut in range(1, len(parts)):
        group = "/".join(parts[:cut])
        if (recipes_dir() / group).is_dir():
            break
    else:
        return f"{missing} is not a recipe"
    name, choices = "/".join(parts[cut:]), recipe_choices(group)
    close = difflib.get_close_matches(name, choices, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(f'{group}={c}' for c in close)}? " if close else ""
    return f"{group}={name} is not a recipe; {hint}choices: {', '.join(choices)}"


def compose_recipe(overrides: Sequence[str], prog: str, config_dir: str | None = None) -> dict[str, Any]:
    """Compose ``config.yaml`` with command-line ``overrides`` (Hydra syntax)
    and resolve it to plain containers; any composition problem becomes a
    one-line :class:`ConfigError`. ``config_dir`` is ``--config-dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")] + search_path_override(config_dir)
    try:
        with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3", job_name=prog):
            cfg = compose(config_name="config", overrides=plain)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "a value"
        raise ConfigError(f"{key} is required by this recipe: add {key}=... on the command line") from None
    except (HydraException, OmegaConfBaseException) as err:
        line = _first_line(err)
        unknown = re.match(r"Could not override '([^']+)'", line)
        if unknown:
            line = f"{unknown.group(1)} is not an option of this recipe"
        missing = re.search(r"Could not find '([^']+)'", line)
        if missing:
            raise ConfigError(unknown_recipe(missing.group(1))) from None
        raise ConfigError(f"{line} (see `{prog} --cfg job` for the options)") from None


def json_line(obj: Any) -> str:
    """``obj`` as one line of strict JSON: a non-finite number (a diverged
    model's perplexity) becomes null, as JSON has no NaN or infinity."""
    from ct_core.train.metric_logger import json_safe

    return json.dumps(json_safe(obj), allow_nan=False)
