"""What every command shares: recipe lookup, Hydra composition, and turning
user mistakes into one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
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


def utf8_streams() -> None:
    """Write stdout and stderr as UTF-8 when the locale says ASCII
    (``LC_ALL=C`` with Python's UTF-8 mode off), as UTF-8 mode itself would:
    a sample or a message holding ``é`` is then printed, not a traceback.
    Bytes that arrived undecodable (a non-UTF-8 file name) go out as they came."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding in ("ascii", "ansix3.41968", "646", "usascii") and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="surrogateescape")


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Print a :class:`UserError` as ``prog: error: message`` and exit 2."""
    utf8_streams()
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
    """The override that adds ``--config-dir`` to the recipe search path; a
    missing folder is a one-line :class:`ConfigError` (Hydra only warns)."""
    if not config_dir:
        return []
    folder = Path(config_dir).expanduser()
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise ConfigError(f"--config-dir {config_dir}: {what}; give the folder that holds your recipes "
                          "(e.g. my_config with my_config/local/default.yaml)")
    return [f"hydra.searchpath=[file://{folder.resolve()}]"]


def yaml_error(err: Exception) -> ConfigError:
    """A YAML syntax error of a recipe file as one line: the file, the line
    (counted from 1, as editors do) and the parser's reason."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or _first_line(err)
    where = f"{mark.name} line {mark.line + 1}" if mark is not None else "a recipe file"
    return ConfigError(f"{where}: {problem} (not valid YAML); fix that line of the recipe")


def unreadable_override(override: str) -> str:
    """Hydra's lexer refused ``key=value`` on the command line: it reads an
    unquoted value only if it is plain ASCII without brackets, parentheses,
    commas or quotes. Say how to quote it, shell quotes around Hydra's."""
    key, eq, value = override.partition("=")
    if not eq:
        return f"{override}: Hydra cannot read this override; write it as key=value"
    inner = f'"{value}"' if "'" in value else f"'{value}'"
    outer = "'" if "'" not in inner else '"'
    return (f"{override}: Hydra reads a value with non-ASCII letters, parentheses or brackets only when it is "
            f"quoted; put Hydra's quotes inside the shell's: {outer}{key}={inner}{outer}")


def _check_encodable(override: str) -> None:
    """Under an ASCII locale without Python's UTF-8 mode, a non-ASCII
    argument arrives as escaped bytes that Hydra cannot write into the run's
    recipe; say so in one line instead of Hydra's traceback."""
    try:
        override.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(override).decode("utf-8", "replace")
        raise ConfigError(f"{shown}: non-ASCII text needs a UTF-8 locale, and this one is ASCII; run again with "
                          "PYTHONUTF8=1 (or LC_ALL=C.UTF-8)") from None


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
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    for override in overrides:
        _check_encodable(override)
    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")] + search_path_override(config_dir)
    try:
        OverridesParser.create().parse_overrides(list(overrides))  # hydra.* too, which compose skips
        with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3", job_name=prog):
            cfg = compose(config_name="config", overrides=plain)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except yaml.YAMLError as err:  # a user's recipe under --config-dir
        raise yaml_error(err) from None
    except OverrideParseException as err:
        raise ConfigError(unreadable_override(err.override)) from None
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
