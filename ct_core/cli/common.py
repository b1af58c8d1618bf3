"""What every command shares: recipe lookup, Hydra composition, and turning
user mistakes into one-line errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from ct_core.errors import ConfigError, UserError


def recipes_dir() -> Path:
    """The installed recipes (``recipes/`` in a checkout)."""
    import ct_recipes

    return Path(ct_recipes.__file__).resolve().parent


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


def compose_recipe(overrides: Sequence[str], prog: str) -> dict[str, Any]:
    """Compose ``config.yaml`` with command-line ``overrides`` (Hydra syntax)
    and resolve it to plain containers; any composition problem becomes a
    one-line :class:`ConfigError`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
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
        raise ConfigError(f"{line} (see `{prog} --cfg job` for the options)") from None
