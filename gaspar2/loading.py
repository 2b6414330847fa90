"""Finding the app before any worker is forked, and telling once why a worker cannot start.

The producer never imports the app itself: each generation of workers imports it once, in
a preloader the fork server forks for it (``preload``), so a reload (SIGHUP) runs new code
and nothing else does. ``probe`` imports it once in a throwaway child process, before the
fork server exists, so a missing module or a misspelt attribute is one clear line and exit
code 4, not a traceback from every worker.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import signal
import sys
import traceback
from typing import Any

from . import logs
from .consumer import Consumer, MissingAttribute, load_target, split_spec

log = logging.getLogger("gaspar2")

EXIT_USAGE = 2       # the command line, GASPAR2_CMD_ARGS or the config file is wrong
EXIT_BOOT = 3        # a worker cannot start: the app's import or its setup() raised
EXIT_LOAD = 4        # the app cannot be found: no such module, or no such attribute


def resolve(spec: str) -> int:
    """Import MODULE and read ATTR of ``spec``, logging what is wrong; an exit code."""
    module_name, _ = split_spec(spec)
    try:
        target = load_target(spec)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            log.error("cannot load %s: no module named %r", spec, exc.name)
            return EXIT_LOAD
        return import_failed(spec, module_name, exc)
    except MissingAttribute as exc:
        names = [n for n in dir(exc.owner) if n[:1] != "_"]
        close = difflib.get_close_matches(exc.part, names, 1)
        log.error("cannot load %s: %s%s", spec, exc,
                  " (did you mean %r?)" % close[0] if close else "")
        return EXIT_LOAD
    except BaseException as exc:
        return import_failed(spec, module_name, exc)
    if not (isinstance(target, Consumer) or callable(target)):
        log.error("cannot load %s: expected a Consumer, a Consumer subclass or a callable, "
                  "got %r", spec, target)
        return EXIT_LOAD
    wrong = signature_problem(target)
    if wrong:
        log.error("cannot load %s: %s", spec, wrong)
        return EXIT_LOAD
    return 0


def signature_problem(target: object) -> str | None:
    """Why ``target`` cannot take a request (no handler, or one that does not accept a single
    positional argument), or None. Checked before any worker starts, so a wrong signature is
    one line at startup rather than a reset on every request; a callable whose signature
    cannot be read gets the benefit of the doubt."""
    arguments: tuple[object, ...] = (b"",)
    if isinstance(target, type) and issubclass(target, Consumer):
        if target.handle is Consumer.handle:
            return "%s does not override handle()" % target.__qualname__
        handle: Any = target.handle
        arguments = (None, b"")                 # unbound: self, then the request
    elif isinstance(target, Consumer) and type(target).handle is Consumer.handle:
        if target.handler is None:
            return "this Consumer has no handler: pass Consumer(handler=...) or override handle()"
        handle = target.handler
    elif isinstance(target, Consumer):
        handle = target.handle
    else:
        handle = target
    try:
        signature = inspect.signature(handle)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*arguments)
    except TypeError as exc:
        name = getattr(handle, "__qualname__", repr(handle))
        return "%s cannot be called with one argument, the request (%s)" % (name, exc)
    return None


def import_failed(spec: str, module_name: str, exc: BaseException) -> int:
    log.error("cannot load %s: importing %s raised %s: %s", spec, module_name,
              type(exc).__name__, exc, exc_info=True)
    return EXIT_BOOT


def probe(spec: str) -> int:
    """``resolve`` in a child process, so this one imports nothing of the app."""
    split_spec(spec)                # ValueError: a usage error, told here
    pid = os.fork()
    if pid == 0:
        code = EXIT_BOOT
        try:
            code = resolve(spec)
        except BaseException:
            log.exception("cannot load %s", spec)
        finally:
            logs.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else EXIT_BOOT


def preload(spec: str | None) -> None:
    """Import MODULE of ``spec`` and read ATTR, in a generation's preloader: the workers it
    forks then find the module in ``sys.modules`` and run the code as it was read here.
    Nothing to do for an app given as an object (``spec`` None): fork copies it."""
    if spec is not None:
        load_target(spec)


def find_module(spec: str) -> int:
    """Whether MODULE of ``spec`` can be found, without importing it (nor forking): for
    ``gaspar2 worker``, whose workers report the rest themselves."""
    module_name, _ = split_spec(spec)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(module_name)
    except ImportError:
        found = None
    if found is None:
        log.error("cannot load %s: no module named %r", spec, module_name)
        return EXIT_LOAD
    return 0


def report_setup_failure(worker_id: int, directory: str | None) -> None:
    """Log why a worker's import or setup() failed, with the traceback. A traceback that
    another worker of this producer logged already, with no worker started since, is not
    logged again: eight workers failing alike print it once.

    TERM is held off from here on: the producer stops the other workers as soon as one has
    failed, and the worker that took the turn to log must not die before it has."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    text = traceback.format_exc()
    if directory is not None and not first_report(directory, text):
        log.debug("worker %d: import or setup() failed the same way: %s", worker_id,
                  text.strip().splitlines()[-1])
        return
    log.error("worker %d: cannot start: importing the app or its setup() failed, exiting",
              worker_id, exc_info=True)


def first_report(directory: str, text: str) -> bool:
    digest = hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:16]
    try:
        os.close(os.open(os.path.join(directory, "setup-failed-" + digest),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        pass
    return True


def forget_setup_failures(directory: str | None) -> None:
    """A worker started, or a reload asks for new code: the next failure is news again."""
    if directory is not None:
        for path in glob.glob(os.path.join(directory, "setup-failed-*")):
            try:
                os.unlink(path)
            except OSError:
                pass
