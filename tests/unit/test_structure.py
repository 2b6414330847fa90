"""The codebase stays in rooms a newcomer can walk into: small modules, classes, functions."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "gaspar2"
MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_sizes(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 400, "%s has over 400 lines" % path.name
    for node in ast.walk(ast.parse(source)):
        size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, ast.ClassDef):
            assert size <= 250, "class %s has %d lines" % (node.name, size)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert size <= 50, "function %s has %d lines" % (node.name, size)
