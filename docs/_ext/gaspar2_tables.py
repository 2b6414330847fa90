"""The reference tables that the code writes, as reStructuredText: every setting from
``gaspar2.settings``, the command line from ``gaspar2.cli``'s argument parser, every metric
from ``gaspar2.producer.metrics``, the signals the producer handles and the exit statuses
``gaspar2.loading`` names; and the ratios of a benchmark run, from its ``results.json``.
Nothing here needs Sphinx: the directives of ``gaspar2_reference`` call these functions at
build time, and the tests call them to check that the reference names everything the code
has.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# -- what the code holds ---------------------------------------------------------------------

TYPE_NAMES = {"size": "size: bytes, or a number with a unit (``64MiB``, ``2GB``, ``512k``)",
              "seconds": "seconds (a number, 0 or more)", "int": "integer", "float": "number",
              "str": "string", "flag": "boolean (on the command line: the flag alone)",
              "mode": "octal file mode (``0o660``; on the command line ``660``)",
              "addresses": "addresses (a list in a config file; the flag may repeat)",
              "command_line": "a command line: a program and its arguments (a list of words "
                              "in a config file)"}


def type_name(convert: Callable[[Any], Any]) -> str:
    """What a setting's converter takes, in words: a known one by name, any other by the
    name the code gives it (``one of text, json``)."""
    name = getattr(convert, "__name__", type(convert).__name__)
    return TYPE_NAMES.get(name, name)


def human_size(value: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale and value % scale == 0:
            return "%d %s" % (value // scale, unit)
    return "%d bytes" % value


def default_text(setting: Any) -> str:
    from gaspar2 import settings

    value = setting.default
    if value is None:
        return "none (see the help)"
    text = "``%s``" % settings.show(setting, value).strip("'")
    if setting.convert is settings.size and value:
        text += " (%s)" % human_size(value)
    return text


def settings_table() -> tuple[Any, ...]:
    from gaspar2 import settings

    return settings.SETTINGS


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """``gaspar2`` and each of its commands, as (program name, parser)."""
    from gaspar2 import cli

    root = cli.build_parser()
    found = [("gaspar2", root)]
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [("gaspar2 " + name, sub) for name, sub in action.choices.items()]
    return found


@dataclass
class MetricDefinition:
    name: str           # as exposed: a counter's ends in _total
    kind: str           # counter, histogram, gauge
    help: str
    labels: tuple[str, ...] = ()
    values: dict[str, list[str]] = field(default_factory=dict)   # label -> values made at start


class _Anything:
    """Stands for the producer's parts when the gauges are only being listed: any attribute
    and any call give another stand-in; the gauges' read functions are never called."""

    def __getattr__(self, name: str) -> _Anything:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Anything:
        return self


def metric_definitions() -> list[MetricDefinition]:
    """Every metric the producer registers, in the order the code defines them: ``Metrics``
    is made with every gauge family of ``gaspar2.producer.metrics`` (each module function
    that returns ``Gauges``), with prometheus-client's constructors recorded on the way and
    the HTTP server replaced by a stand-in, so nothing listens."""
    import prometheus_client as prom

    from gaspar2.producer import metrics

    defined: list[MetricDefinition] = []
    originals = {kind: getattr(prom, kind) for kind in ("Counter", "Histogram", "Gauge")}

    def recorder(kind: str) -> Callable[..., Any]:
        make = originals[kind]

        def record(name: str, documentation: str, labelnames: Any = (), **kw: Any) -> Any:
            made = make(name, documentation, labelnames, **kw)
            exposed = name + "_total" if kind == "Counter" else name
            entry = MetricDefinition(exposed, kind.lower(), documentation, tuple(labelnames))
            defined.append(entry)
            if labelnames:
                labels = made.labels

                def remember(*values: str, **named: str) -> Any:
                    for label, value in zip(labelnames, values, strict=False):
                        entry.values.setdefault(label, []).append(value)
                    return labels(*values, **named)
                made.labels = remember
            return made
        return record

    class Server:
        address = ("127.0.0.1", 0)

        def __init__(self, *args: Any) -> None:
            pass

        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

    gauges: dict[str, Any] = {}
    for function in vars(metrics).values():
        returns = getattr(function, "__annotations__", {}).get("return")
        if callable(function) and returns == "Gauges":
            count = function.__code__.co_argcount
            gauges.update(function(*[_Anything()] * count))
    saved_server = metrics.HttpServer
    quiet = metrics.log.disabled
    metrics.log.disabled = True         # its "metrics on ..." line
    try:
        for kind in originals:
            setattr(prom, kind, recorder(kind))
        metrics.HttpServer = Server  # type: ignore[misc,assignment]
        metrics.Metrics(gauges, "127.0.0.1:0")
    finally:
        for kind, make in originals.items():
            setattr(prom, kind, make)
        metrics.HttpServer = saved_server  # type: ignore[misc]
        metrics.log.disabled = quiet
    return defined


def handled_signals() -> list[str]:
    """The signals ``Producer`` handles, ``SIGTERM`` and so on, from its ``handle_<signal>``
    methods, in the order the class defines them."""
    from gaspar2 import Producer

    return ["SIG" + name[len("handle_"):].upper() for name in vars(Producer)
            if name.startswith("handle_")]


def exit_statuses() -> dict[int, str]:
    """The exit statuses ``gaspar2.loading`` names: value -> constant."""
    from gaspar2 import loading

    return {value: name for name, value in vars(loading).items()
            if name.startswith("EXIT_") and isinstance(value, int)}


# -- as reStructuredText ---------------------------------------------------------------------

def escape(text: str) -> str:
    """Text from the code, to be read as it is inside reStructuredText."""
    return re.sub(r"([\\`*_|\[\]<>:])", r"\\\1", text)


def flag_reference(flags: tuple[str, ...], metavar: str | None, program: str) -> str:
    shown = ", ".join("%s%s" % (f, " " + metavar if metavar else "") for f in flags)
    return ":option:`%s <%s %s>`" % (shown, program, flags[-1])


def settings_rst(notes: dict[str, str]) -> Iterator[str]:
    for setting in settings_table():
        yield ".. setting:: %s" % setting.name
        yield ""
        if setting.flags:
            yield "   :flag: %s" % flag_reference(setting.flags, setting.metavar,
                                                   "gaspar2 serve")
        else:
            yield "   :flag: none: a ``Producer`` keyword argument only"
        yield "   :type: %s" % type_name(setting.convert)
        yield "   :default: %s" % default_text(setting)
        where = ["command line"]
        if setting.in_file:
            where.append("config file")
        if setting.producer:
            where.append("``Producer(%s=...)``" % setting.name)
        yield "   :set from: %s" % ", ".join(where)
        yield ""
        yield "   %s." % escape(setting.help[:1].upper() + setting.help[1:]).rstrip(".")
        if setting.name in notes:
            yield ""
            yield from ("   " + line for line in notes[setting.name].splitlines())
        yield ""


def option_names(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    return ", ".join("%s %s" % (o, metavar) for o in action.option_strings)


def cli_rst(notes: dict[str, str]) -> Iterator[str]:
    from gaspar2 import settings

    by_dest = settings.BY_NAME
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"       # argparse wraps its usage lines to the terminal
    try:
        yield from _cli_rst(notes, by_dest)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


def _cli_rst(notes: dict[str, str], by_dest: dict[str, Any]) -> Iterator[str]:
    for program, parser in parsers():
        yield ".. program:: %s" % program
        yield ""
        yield program
        yield "-" * len(program)
        yield ""
        yield ".. code-block:: text"
        yield ""
        yield from ("   " + line for line in parser.format_usage().strip().splitlines())
        yield ""
        if parser.description:
            yield escape(parser.description)
            yield ""
        if program in notes:
            yield from notes[program].splitlines()
            yield ""
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name in action.choices:
                    help_text = next((c.help for c in action._choices_actions
                                      if c.dest == name), "")
                    yield "* :program:`gaspar2 %s`: %s" % (name, escape(help_text or ""))
                yield ""
                continue
            yield ".. option:: %s" % option_names(action)
            yield ""
            text = (action.help or "").replace("%%", "%")
            if text == argparse.SUPPRESS:
                continue
            yield "   %s" % escape(text)
            if action.option_strings and action.dest in by_dest \
                    and program in ("gaspar2 serve",):
                yield ""
                yield "   The setting :setting:`%s`." % action.dest
            yield ""
        if parser.epilog:
            yield ".. code-block:: text"
            yield ""
            yield from ("   " + line for line in parser.epilog.strip().splitlines())
            yield ""


def metrics_rst(notes: dict[str, str]) -> Iterator[str]:
    for metric in metric_definitions():
        yield ".. metric:: %s" % metric.name
        yield ""
        yield "   :type: %s" % metric.kind
        if metric.labels:
            described = []
            for label in metric.labels:
                values = metric.values.get(label)
                described.append("``%s``%s" % (label, " (%s)" % ", ".join(
                    "``%s``" % v for v in values) if values else ""))
            yield "   :labels: %s" % "; ".join(described)
        if metric.kind == "histogram":
            yield "   :series: ``%s_bucket{le=...}``, ``%s_sum``, ``%s_count``" % (
                (metric.name,) * 3)
        yield ""
        yield "   %s." % escape(metric.help).rstrip(".")
        if metric.name in notes:
            yield ""
            yield from ("   " + line for line in notes[metric.name].splitlines())
        yield ""


def table_rst(header: tuple[str, str], rows: list[tuple[str, str]]) -> Iterator[str]:
    yield ".. list-table::"
    yield "   :header-rows: 1"
    yield "   :widths: 1 6"
    yield ""
    for left, right in [header, *rows]:
        yield "   * - %s" % left
        first, *rest = right.splitlines() or [""]
        yield "     - %s" % first
        yield from ("       " + line for line in rest)
    yield ""


def ratios_rst(results: dict[str, Any]) -> Iterator[str]:
    """A benchmark run's ratios, each with its goal and verdict, as ``benchmarks/report.py``
    judged them, under a line naming the run (machine, rounds, commit, date)."""
    machine, run = results["machine"], results["settings"]
    yield ("%d CPUs, %d workers, %d rounds of %g s points; commit ``%s``, %s."
           % (machine["cpus"], run["workers"], run["rounds"], run["duration"],
              machine["commit"], machine["date"][:10]))
    yield ""
    yield ".. list-table::"
    yield "   :header-rows: 1"
    yield "   :widths: 8 1 1 1"
    yield ""
    yield from ("   * - %s" % cell if i == 0 else "     - %s" % cell
                for i, cell in enumerate(("ratio", "value", "goal", "verdict")))
    for ratio in results["ratios"]:
        unit, value = ratio.get("unit"), ratio["value"]
        shown = ("n/a" if value is None else "%.1f %s" % (value, unit) if unit
                 else "%.2f" % value)
        sign = ("≥" if ratio["better"] == "higher" else "≤") if not ratio.get("strict") else (
            ">" if ratio["better"] == "higher" else "<")
        goal = ("%s better" % ratio["better"] if ratio["goal"] is None
                else "%s %g%s" % (sign, ratio["goal"], " " + unit if unit else ""))
        verdict = {None: "", True: "met", False: "**missed**"}[ratio["met"]]
        for i, cell in enumerate((escape(ratio["name"]), shown, goal, verdict)):
            yield ("   * - %s" if i == 0 else "     - %s") % cell
    yield ""
