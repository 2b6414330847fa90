"""A gevent program that embeds a Producer, the way gaspar2's users do.

    python tests/embedded_app.py [--patch] [--workers N] [--handler NAME | --exec LINE]
                                 [--set NAME=VALUE]...

With --patch it calls gevent.monkey.patch_all() first. ``--handler`` names a handler in
tests/handlers.py (``fair`` by default); ``--exec`` serves through a program instead
(``gaspar2.Command(LINE)``); each ``--set`` is a keyword argument of Producer.
Before serving for good, it sends itself one request from the thread (and greenlet) that
runs the producer's hub.
"""

import sys

if "--patch" in sys.argv:
    from gevent import monkey
    monkey.patch_all()

import logging
import os

import gevent

import gaspar2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import handlers


def arguments(flag):
    return [sys.argv[i + 1] for i, arg in enumerate(sys.argv[:-1]) if arg == flag]


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workers = int(arguments("--workers")[-1]) if "--workers" in sys.argv else 2
    if "--exec" in sys.argv:
        handler = gaspar2.Command(arguments("--exec")[-1])
    else:
        handler = getattr(handlers, arguments("--handler")[-1] if "--handler" in sys.argv
                          else "fair")
    options = dict(setting.split("=", 1) for setting in arguments("--set"))
    producer = gaspar2.Producer(handler, 0, processes=workers, **options)
    gevent.spawn(say_hello, producer)
    producer.start()


def say_hello(producer):
    producer.running.wait()
    url = "%s:%d" % producer.address
    reply = gaspar2.client.request(url, b"quick::hello-from-the-hub", timeout=30)
    logging.info("self-request answered %r", reply)


if __name__ == "__main__":
    main()
