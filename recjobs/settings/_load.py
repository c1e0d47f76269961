"""Loading settings: embedded defaults, ``RECJOBS_CONFIG``, ``RECJOBS_*`` variables, overrides."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from recjobs.errors import SettingsError
from recjobs.settings._sections import Settings

ENV_PREFIX = "RECJOBS_"
# RECJOBS_* variables that are not settings: the settings file's name, the fault-injection
# testing aid (recjobs/faults.py), and what the test suite and scripts read (the MovieLens
# folder, PostgreSQL's binaries). Every RECJOBS_TEST_* variable is the test suite's too, so a
# developer's exported RECJOBS_TEST_POSTGRES_URL never breaks a command. Any other name is
# a setting, and a misspelt one an error.
NOT_SETTINGS = frozenset({"CONFIG", "FAULT_AT", "ML100K", "PG_BIN"})
TEST_PREFIX = ENV_PREFIX + "TEST_"
# Keys taken as the variable's text, never parsed as JSON: a path, a URL, or a secret such as
# the password "1234" or "true", which JSON would turn into a number or a boolean.
_RAW_STRINGS = frozenset({"home", "database_url", "inbox_dir", "smtp_user", "smtp_password"})


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _parse_env_value(raw: str) -> Any:
    # JSON where it parses (numbers, lists, null, booleans), the plain string otherwise,
    # so RECJOBS_FAMILIES='["als"]' and RECJOBS_HOME=/data both work.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if (not name.startswith(ENV_PREFIX) or name.startswith(TEST_PREFIX)
                or name[len(ENV_PREFIX):] in NOT_SETTINGS):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        value = _parse_env_value(raw) if path[-1] not in _RAW_STRINGS else raw
        node[path[-1]] = value
    return out


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from defaults, ``RECJOBS_CONFIG``, ``RECJOBS_*`` variables and overrides.

    Raises :class:`SettingsError` naming the offending key and where it came from.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    sources: list[tuple[str, Mapping[str, Any]]] = []
    config_file = env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        try:
            sources.append((config_file, json.loads(Path(config_file).read_text())))
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read settings file {config_file}: {exc}") from exc
    sources.append(("environment variables", _env_overrides(env)))
    if overrides:
        sources.append(("overrides", {k: v for k, v in overrides.items() if v is not None}))
    for origin, layer in sources:
        data = _deep_merge(data, layer)
        try:
            Settings.model_validate(data)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, origin)) from None
    return Settings.model_validate(data)


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid settings from {origin}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        env_name = ENV_PREFIX + "__".join(str(p).upper() for p in err["loc"])
        lines.append(f"  {key} (env {env_name}): {err['msg']}")
    return "\n".join(lines)
