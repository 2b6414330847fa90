"""README.rst's table of options says what gaspar2/settings.py holds: every option it names
exists, and every default it gives is the table's own (a default it describes in words,
such as ``1/4 of RAM``, is one settings.py leaves to be worked out at start: None)."""

import pathlib
import re

from gaspar2 import settings

README = pathlib.Path(__file__).resolve().parents[2] / "README.rst"
ROW = re.compile(r"^([a-z_]+) +(\S+(?: \S+)*?)  +\S")
UNITS = {"s": 1.0, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def table_rows():
    text = README.read_text()
    start = text.index("option                default      what it does")
    end = text.index("\n=====", text.index("\n=====", start) + 1)
    return [ROW.match(line).groups() for line in text[start:end].splitlines()[2:]
            if ROW.match(line)]


def as_value(text):
    """The default as written: a number with a unit, a plain number, "none", or words."""
    if text == "none":
        return None
    number, _, unit = text.partition(" ")
    if number.isdigit() and (unit in UNITS or not unit):
        return int(number) * UNITS.get(unit, 1)
    return "words"


def test_every_option_in_the_table_is_a_setting_with_that_default():
    rows = table_rows()
    assert len(rows) >= 15, rows
    for name, default in rows:
        assert name in settings.BY_NAME, "README names an option settings.py lacks: %s" % name
        written, actual = as_value(default), settings.DEFAULTS[name]
        if written == "words":
            assert actual is None, "%s: README says %r, settings.py %r" % (name, default, actual)
        else:
            assert written == actual, "%s: README says %r, settings.py %r" % (name, default, actual)
