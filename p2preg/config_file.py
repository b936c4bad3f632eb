"""``p2preg run --config FILE``: the node's options in a TOML file.

Layout (every key optional; names are the ``p2preg run`` flags without the dashes, with
``-`` or ``_`` alike)::

    data-dir = "/var/lib/p2preg"
    overlay = "10.0.0.5:7000"
    admin = "127.0.0.1:7080"
    sip = "0.0.0.0:5060"
    bootstrap = ["10.0.0.6:7000", "10.0.0.7:7000"]
    ping-interval = 2.0

    [registrar]
    domains = ["example.com"]       # empty or absent: serve any domain
    default_expires = 3600
    min_expires = 60
    max_expires = 86400
    min_expires_mode = "clamp"      # or "423"
    max_contacts = 10
    max_contacts_mode = "503"       # or "evict"
    retry_after = 5                 # Retry-After of every 503
    max_in_flight = 1000            # overload bound: overlay-backed requests at once
    overlay_deadline = 5.0          # s before a REGISTER/lookup gives up with 503

Precedence is built-in default < file < command-line flag. :func:`merge` states it for
plain dicts; in argparse terms it is::

    values = load_config(path, run_parser_dests(run_parser))
    run_parser.set_defaults(**values.run)   # then parse_args: given flags win

(argparse type-converts string defaults, so ``data-dir = "x"`` becomes a Path as the flag
would.) An unknown key, in either table, is an error naming the key and the file.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from p2preg.sip.registrar import RegistrarConfig

# The `p2preg run` flags as of issue 4, by argparse dest; callers holding the parser should
# pass run_parser_dests(parser) instead so new flags are accepted without touching this list.
RUN_KEYS = frozenset(
    {
        "data_dir",
        "overlay",
        "admin",
        "sip",
        "bootstrap",
        "overlay_name",
        "node_id",
        "ready_file",
        "log_level",
        "ping_interval",
        "missed_pings",
        "update_interval",
        "finger_interval",
        "jitter",
        "successors",
        "predecessors",
        "leave_timeout",
    }
)
_NOT_IN_FILE = frozenset({"help", "config", "command"})

_REGISTRAR_KEYS = frozenset(f.name for f in fields(RegistrarConfig) if f.init)
# Front-end settings that are not registrar rules but live in the same table.
SERVICE_KEYS = {
    "max_in_flight": int,
    "overlay_deadline": float,
    "max_connections": int,
    "half_open_timeout": float,
    "idle_timeout": float,
}


class ConfigError(Exception):
    """A config file the node cannot use; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class FileConfig:
    run: dict[str, Any] = field(default_factory=dict)  # by argparse dest
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    service: dict[str, Any] = field(default_factory=dict)  # SERVICE_KEYS given in the file


def run_parser_dests(parser: argparse.ArgumentParser) -> frozenset[str]:
    """The option dests of ``p2preg run``: the keys a config file may set."""
    dests = set()
    for action in parser._actions:  # argparse has no public listing of its actions
        if action.option_strings and action.dest not in _NOT_IN_FILE:
            dests.add(action.dest)
    return frozenset(dests)


def _norm(key: str) -> str:
    return key.strip().replace("-", "_")


def load_config(path: Path | str, run_keys: Iterable[str] = RUN_KEYS) -> FileConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_config(raw, run_keys, origin=str(path))


def parse_config(
    raw: Mapping[str, Any], run_keys: Iterable[str] = RUN_KEYS, *, origin: str = "config"
) -> FileConfig:
    allowed = frozenset(run_keys)
    run: dict[str, Any] = {}
    registrar_raw: Mapping[str, Any] = {}
    for key, value in raw.items():
        name = _norm(key)
        if name == "registrar":
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: 'registrar' must be a table ([registrar])")
            registrar_raw = value
        elif name in allowed:
            run[name] = _run_value(origin, key, name, value)
        else:
            raise ConfigError(f"{origin}: unknown key {key!r}" + _hint(name, allowed))
    registrar_args: dict[str, Any] = {}
    service: dict[str, Any] = {}
    for key, value in registrar_raw.items():
        name = _norm(key)
        if name in SERVICE_KEYS:
            service[name] = _typed(origin, f"registrar.{key}", value, SERVICE_KEYS[name])
        elif name in _REGISTRAR_KEYS:
            registrar_args[name] = _registrar_value(origin, key, name, value)
        else:
            known = _REGISTRAR_KEYS | frozenset(SERVICE_KEYS)
            raise ConfigError(f"{origin}: unknown key 'registrar.{key}'" + _hint(name, known))
    try:
        registrar = RegistrarConfig(**registrar_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin}: [registrar]: {exc}") from None
    for name in ("max_in_flight", "max_connections"):
        if name in service and service[name] < 1:
            raise ConfigError(f"{origin}: registrar.{name} must be at least 1")
    return FileConfig(run, registrar, service)


def _hint(name: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _run_value(origin: str, key: str, name: str, value: Any) -> Any:
    if name == "bootstrap":
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{origin}: {key!r} must be a list of "HOST:PORT" strings')
        return list(value)
    if isinstance(value, dict | list):
        raise ConfigError(f"{origin}: {key!r} must be a single value")
    if isinstance(value, bool | int | float):
        # argparse converts string defaults with the flag's type; numbers pass as they are.
        return value
    return str(value)


def _typed(origin: str, key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{origin}: {key!r} must be a number")
    if kind is int:
        if not isinstance(value, int):
            raise ConfigError(f"{origin}: {key!r} must be an integer")
        return value
    return float(value)


def _registrar_value(origin: str, key: str, name: str, value: Any) -> Any:
    if name == "domains":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{origin}: 'registrar.{key}' must be a list of domain names")
        return tuple(value)
    if name in ("min_expires_mode", "max_contacts_mode"):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # min_expires_mode = 423 reads as well as "423"
        if not isinstance(value, str):
            raise ConfigError(f"{origin}: 'registrar.{key}' must be a string")
        return value
    return _typed(origin, f"registrar.{key}", value, int)


def merge(
    defaults: Mapping[str, Any], file_values: Mapping[str, Any], flag_values: Mapping[str, Any]
) -> dict[str, Any]:
    """Built-in defaults, overridden by the file, overridden by the flags actually given.

    ``flag_values`` must hold only the flags present on the command line (not argparse's
    defaults); keys are argparse dests."""
    merged = dict(defaults)
    merged.update(file_values)
    merged.update(flag_values)
    return merged
