"""Where settings come from: the command line, then ``GASPAR2_CMD_ARGS``, then a config file,
then the defaults of the one table (settings.py). The first source that gives a setting wins.

A config file is Python: its module-level names are settings (``bind = "0.0.0.0:10123"``,
``workers = 8``); names starting with ``_``, modules, functions and classes are left alone,
and any other name that is not a setting is an error, so a typo does not pass unnoticed.
``--host`` and ``--port`` are another way to write one ``--bind``: in any one source they add
HOST:PORT to that source's addresses.
"""

from __future__ import annotations

import argparse
import difflib
import os
import runpy
import shlex
import types
from typing import Any

from . import settings

ENVIRONMENT = "GASPAR2_CMD_ARGS"
DEFAULT_FILE = "gaspar2.conf.py"


class ConfigError(Exception):
    """A config file or GASPAR2_CMD_ARGS that cannot be used: a usage error."""


def suggest(name: str) -> str:
    close = difflib.get_close_matches(name, settings.BY_NAME, 1)
    return " (did you mean %r?)" % close[0] if close else ""


def load_file(path: str) -> dict[str, Any]:
    """The settings a config file gives, converted; ConfigError says what is wrong."""
    try:
        namespace = runpy.run_path(path, run_name="gaspar2_config")
    except OSError as exc:
        raise ConfigError("cannot read the config file %s: %s"
                          % (path, exc.strerror or exc)) from exc
    except Exception as exc:
        raise ConfigError("the config file %s raised %s: %s"
                          % (path, type(exc).__name__, exc)) from exc
    given = {}
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        setting = settings.BY_NAME.get(name)
        if setting is None or not setting.in_file:
            raise ConfigError("%s: %r is not a setting%s" % (path, name, suggest(name)))
        try:
            given[name] = None if value is None else setting.convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError("%s: %s: %s" % (path, name, exc)) from exc
    return given


def environment_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=ENVIRONMENT, add_help=False)
    settings.add_arguments(parser)
    return parser


def from_environment(environ: Any = os.environ) -> dict[str, Any]:
    """The settings ``GASPAR2_CMD_ARGS`` gives (a usage error exits 2, as on the command line)."""
    text = environ.get(ENVIRONMENT, "")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError("%s: %s" % (ENVIRONMENT, exc)) from exc
    return vars(environment_parser().parse_args(words))


def config_path(command_line: dict[str, Any], environment: dict[str, Any]) -> str | None:
    path = command_line.get("config") or environment.get("config")
    if path is None and os.path.isfile(DEFAULT_FILE):
        path = DEFAULT_FILE
    return path


def fold_addresses(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn each layer's host and port into one more address of that layer's ``bind``; a
    missing half comes from the other layers, else the default."""
    host = next((layer["host"] for layer in reversed(layers) if layer.get("host") is not None),
                settings.DEFAULTS["host"])
    port = next((layer["port"] for layer in reversed(layers) if layer.get("port") is not None),
                settings.DEFAULTS["port"])
    folded = []
    for layer in layers:
        layer = dict(layer)
        h, p = layer.pop("host", None), layer.pop("port", None)
        if h is not None or p is not None:
            bind = settings.addresses(layer.get("bind") or [])
            layer["bind"] = [*bind, settings.host_port(h or host, port if p is None else p)]
        folded.append(layer)
    return folded


def merge(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Layers, lowest first, into one dict of what was given (None: not given)."""
    merged: dict[str, Any] = {}
    for layer in fold_addresses(layers):
        merged.update((k, v) for k, v in layer.items() if v is not None)
    return merged


def gather(command_line: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """What every source gives, merged by precedence; and the config file read, if any."""
    environment = from_environment()
    path = config_path(command_line, environment)
    from_file = load_file(path) if path else {}
    return merge([from_file, environment, command_line]), path


def render(values: settings.Settings, path: str | None) -> str:
    """The resolved settings as a config file."""
    lines = ["# gaspar2 settings: the command line, then %s, then %s, then the defaults"
             % (ENVIRONMENT, path or "no config file")]
    for setting in settings.SETTINGS:
        if setting.in_file and setting.name not in ("host", "port"):
            lines.append("%s = %s" % (setting.name,
                                      settings.show(setting, getattr(values, setting.name))))
    return "\n".join(lines) + "\n"
