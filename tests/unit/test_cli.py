"""The command line's own rules: every option explained, every setting under one name, and a
misspelt option answered with the nearest one."""

import argparse

import pytest

from gaspar2 import cli, config, settings


def parsers():
    top = cli.build_parser()
    (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return {"gaspar2": top, **commands.choices}


@pytest.mark.parametrize("name, parser", parsers().items())
def test_every_option_and_argument_has_help_in_plain_text(name, parser):
    for action in parser._actions:
        assert action.help, "%s: %s has no help" % (name, action.dest)
    text = parser.format_help()
    assert "``" not in text and ":class:" not in text, "reStructuredText in --help"


def test_each_setting_has_one_name_for_the_file_and_the_flag():
    for setting in settings.SETTINGS:
        assert "--" + setting.name.replace("_", "-") in setting.flags, setting.name


def test_print_config_prints_exactly_what_a_user_can_set():
    values = settings.resolve({})
    printed = [line.split(" = ")[0] for line in config.render(values, None).splitlines()[1:]]
    settable = [s.name for s in settings.SETTINGS if s.in_file and s.name not in ("host", "port")]
    assert printed == settable
    options = {o for o in parsers()["serve"]._actions for o in o.option_strings}
    assert {"--" + name.replace("_", "-") for name in printed} <= options


@pytest.mark.parametrize("argv, says", [
    (["serve", "m:f", "--wokers", "2"], "--wokers: did you mean --workers?"),
    (["serve", "m:f", "--max-mesage-size=1"], "did you mean --max-message-size?"),
    (["request", "--timout", "3", "h:1", "x"], "did you mean --timeout?"),
    (["check", "m:f", "--reqest", "x"], "did you mean --request?"),
    (["serve", "m:f", "--zzzzzz"], "unrecognized arguments: --zzzzzz\n"),
])
def test_a_misspelt_option_gets_the_nearest_of_its_own_command(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert says in error
    assert error.startswith("usage: gaspar2 %s" % argv[0]), "the command's own usage"
