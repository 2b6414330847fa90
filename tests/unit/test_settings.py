"""The one table of options: the command line, Producer and the defaults all read it."""

import argparse

import pytest
from hypothesis import given, strategies as st

from gaspar2 import cli, config, settings


def test_every_serve_flag_comes_from_the_table():
    parser = cli.build_parser()
    serve = next(a for a in parser._subparsers._actions
                 if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    flags = {opt for action in serve._actions for opt in action.option_strings} - {"-h", "--help"}
    assert flags == {f for s in settings.SETTINGS for f in s.flags}


def test_flags_not_given_keep_the_defaults_and_given_ones_win():
    args = cli.build_parser().parse_args(["serve", "m:f", "-w", "3", "--max-message-size", "2MiB",
                                          "--access-log"])
    given = {k: v for k, v in vars(args).items() if k in settings.BY_NAME}
    values = settings.resolve(config.merge([given]))
    assert values.workers == 3 and values.max_message_size == 2 * 2**20
    assert values.access_log is True and values.read_timeout == settings.DEFAULTS["read_timeout"]
    assert values.bind == ["127.0.0.1:10123"]
    options = settings.producer_options(given)
    assert "log_level" not in options and options["workers"] == 3


def test_resolve_rejects_unknown_names_and_keeps_defaults_for_none():
    with pytest.raises(TypeError, match="unknown option: tiemout"):
        settings.resolve({"tiemout": 3})
    resolved = settings.resolve({"timeout": None, "window": 4})
    assert resolved.timeout is None and resolved.window == 4 and resolved.port == 10123


@given(n=st.integers(0, 2**40), unit=st.sampled_from(sorted(settings.UNITS)))
def test_sizes_take_units(n, unit):
    assert settings.size("%d%s" % (n, unit)) == n * settings.UNITS[unit]
    assert settings.size(n) == n


@pytest.mark.parametrize("text", ["", "12 parsecs", "-1", "1.5MiB", "MiB"])
def test_bad_sizes_say_what_was_expected(text):
    with pytest.raises(ValueError, match="expected a size"):
        settings.size(text)


def test_flags_and_levels():
    assert settings.flag("yes") is True and settings.flag("0") is False
    with pytest.raises(ValueError):
        settings.flag("maybe")
    assert settings.level("WARNING") == "warning"
    with pytest.raises(ValueError):
        settings.level("loud")
