"""What serve and check refuse before any worker starts: a handler that cannot take a request."""

import functools

import pytest

import gaspar2
from gaspar2.loading import signature_problem


class Handles(gaspar2.Consumer):
    def handle(self, message):
        return message


class TakesNothing(gaspar2.Consumer):
    def handle(self):
        return b""


class Forgets(gaspar2.Consumer):
    pass


def one(message):
    return message


def with_default(message, extra=1):
    return message


def two(message, extra):
    return message


def star(*parts):
    return b""


@pytest.mark.parametrize("target", [
    one, with_default, star, Handles, Handles(), gaspar2.Consumer(one), len,
    functools.partial(two, extra=2), lambda message: message,
])
def test_accepted(target):
    assert signature_problem(target) is None


@pytest.mark.parametrize("target, says", [
    (lambda: b"", "cannot be called with one argument"),
    (two, "two cannot be called with one argument"),
    (TakesNothing, "TakesNothing.handle cannot be called"),
    (TakesNothing(), "TakesNothing.handle cannot be called"),
    (Forgets, "Forgets does not override handle()"),
    (gaspar2.Consumer(), "has no handler"),
    (gaspar2.Consumer(two), "two cannot be called"),
])
def test_refused(target, says):
    problem = signature_problem(target)
    assert problem is not None and says in problem
