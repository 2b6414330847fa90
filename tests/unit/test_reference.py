"""The reference pages the documentation generates name everything the code has: every
setting with its flag, type, default and help, every flag of every command, every signal
the producer handles and every exit status, each described; the hand-written notes on them
name nothing the code lacks. The Sphinx extension calls the same functions at build time
(docs/_ext/gaspar2_tables.py), so what is checked here is what the site shows."""

import argparse
import json
import logging
import pathlib
import re
import sys

import pytest

from gaspar2 import Producer, loading, logs, settings

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import gaspar2_tables as tables  # noqa: E402  (from the path just added)


def entries(lines, directive):
    """{name: the entry's text} for each ``.. directive:: name`` in generated lines."""
    text = "\n".join(lines)
    found = re.split(r"^\.\. %s:: (\S+)\n" % directive, text, flags=re.M)[1:]
    return dict(zip(found[::2], found[1::2], strict=True))


def field(entry, name):
    (value,) = re.findall(r"^   :%s: (.*)$" % name, entry, re.M)
    return value


def directive_notes(page, directive):
    """The ``:NAME: text`` notes under ``.. directive::`` in a page of the site."""
    text = (DOCS / page).read_text()
    start = text.index(".. %s::" % directive)
    block = re.match(r".*?\n\n((?:   .*\n|\n)*)", text[start:]).group(1)
    return {m.group(1): m.group(2) for m in re.finditer(r"^   :([^:]+):(.*)$", block, re.M)}


def test_every_setting_is_in_the_reference_with_its_flag_type_default_and_help():
    generated = entries(tables.settings_rst({}), "setting")
    assert list(generated) == [s.name for s in settings.SETTINGS]
    for setting in settings.SETTINGS:
        entry = generated[setting.name]
        for flag in setting.flags:
            assert flag in field(entry, "flag"), (setting.name, flag)
        assert field(entry, "type") == tables.type_name(setting.convert)
        default = field(entry, "default")
        if setting.default is None:
            assert default.startswith("none"), (setting.name, default)
        else:
            assert default.startswith("``%s``" % settings.show(setting, setting.default)
                                      .strip("'")), (setting.name, default)
        words = re.sub(r"\\(.)", r"\1", " ".join(entry.split()))
        assert " ".join(setting.help[1:].split()) in words, setting.name


def test_a_size_default_is_shown_with_its_unit():
    entry = entries(tables.settings_rst({}), "setting")["max_message_size"]
    assert field(entry, "default") == "``%d`` (64 MiB)" % settings.DEFAULTS["max_message_size"]
    assert tables.human_size(3 * 2**30) == "3 GiB" and tables.human_size(1000) == "1000 bytes"


def test_every_flag_of_every_command_is_in_the_reference():
    text = "\n".join(tables.cli_rst({}))
    programs = dict(tables.parsers())
    assert set(programs) == {"gaspar2", "gaspar2 serve", "gaspar2 worker", "gaspar2 keys",
                             "gaspar2 check", "gaspar2 request"}
    sections = re.split(r"^\.\. program:: (.+)$", text, flags=re.M)[1:]
    by_program = dict(zip(sections[::2], sections[1::2], strict=True))
    assert set(by_program) == set(programs)
    flags = 0
    for program, parser in programs.items():
        options = re.findall(r"^\.\. option:: (.*)$", by_program[program], re.M)
        listed = {word.rstrip(",") for line in options for word in line.split()}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name in action.choices:
                    assert ":program:`gaspar2 %s`" % name in by_program[program]
                continue
            for option in action.option_strings or [action.metavar or action.dest]:
                assert option in listed, (program, option)
                flags += 1
    assert flags > len([s for s in settings.SETTINGS if s.flags])


def test_the_serve_options_link_to_their_settings():
    text = "\n".join(tables.cli_rst({}))
    for setting in settings.SETTINGS:
        if setting.flags:
            assert ":setting:`%s`" % setting.name in text, setting.name


def test_every_signal_the_producer_handles_is_described():
    handled = tables.handled_signals()
    installed = [name for name in vars(Producer) if name.startswith("handle_")]
    assert len(handled) == len(installed) >= 8
    assert {"SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR1",
            "SIGUSR2"} <= set(handled)
    notes = directive_notes("reference/signals.rst", "gaspar2-signals")
    assert set(notes) == set(handled)
    assert all(text.strip() for text in notes.values())


def test_every_exit_status_is_described():
    named = tables.exit_statuses()
    assert named == {loading.EXIT_USAGE: "EXIT_USAGE", loading.EXIT_BOOT: "EXIT_BOOT",
                     loading.EXIT_LOAD: "EXIT_LOAD"}
    notes = directive_notes("reference/signals.rst", "gaspar2-exit-statuses")
    assert {str(value) for value in named} <= set(notes)


@pytest.mark.parametrize("page, directive, names", [
    ("reference/settings.rst", "gaspar2-settings", lambda: list(settings.BY_NAME)),
    ("reference/cli.rst", "gaspar2-cli", lambda: [name for name, _ in tables.parsers()]),
    ("reference/metrics.rst", "gaspar2-metrics",
     lambda: [m.name for m in tables.metric_definitions()]),
])
def test_the_notes_on_the_generated_entries_name_only_what_the_code_has(page, directive, names):
    notes = directive_notes(page, directive)
    assert notes, page
    assert set(notes) <= set(names()), set(notes) - set(names())


def test_the_metrics_are_read_from_where_the_code_defines_them():
    defined = {m.name: m for m in tables.metric_definitions()}
    assert defined["gaspar2_requests_total"].labels == ("outcome",)
    assert defined["gaspar2_requests_total"].values["outcome"][0] == "ok"
    assert defined["gaspar2_request_seconds"].kind == "histogram"
    assert defined["gaspar2_worker_exits_total"].labels == ("cause",)
    assert {"gaspar2_workers", "gaspar2_buffered_bytes", "gaspar2_workers_stuck"} <= set(defined)
    text = "\n".join(tables.metrics_rst({}))
    assert list(entries(text.splitlines(), "metric")) == list(defined)
    assert not logging.getLogger("gaspar2").disabled


def test_the_log_formats_page_says_what_logs_py_writes():
    text = " ".join((DOCS / "reference/logs.rst").read_text().split())
    assert "``%s``" % logs.TEXT_FORMAT in text
    for name in ("time", "level", "logger", "message", "pid", "traceback", *logs.ACCESS_FIELDS):
        assert "``%s``" % name in text, name


def test_the_performance_page_shows_every_ratio_of_the_example_run_with_its_verdict():
    results = json.loads((DOCS.parent / "benchmarks" / "results" / "example"
                          / "results.json").read_text())
    text = "\n".join(tables.ratios_rst(results))
    assert results["machine"]["commit"] in text
    rows = text.split("   * - ")[2:]          # past the caption and the header row
    assert len(rows) == len(results["ratios"])
    for row, ratio in zip(rows, results["ratios"], strict=True):
        cells = [cell.strip() for cell in row.split("\n     - ")]
        assert cells[0].replace("\\", "") == ratio["name"]
        if ratio["value"] is not None and "unit" not in ratio:
            assert cells[1] == "%.2f" % ratio["value"]
        assert cells[3] == {None: "", True: "met", False: "**missed**"}[ratio["met"]]
    assert ".. gaspar2-benchmark-ratios::" in (
        DOCS / "explanation" / "performance.rst").read_text()
