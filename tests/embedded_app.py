"""A gevent program that embeds a Producer, the way gaspar2's users do.

    python tests/embedded_app.py [--patch] [--workers N]

With --patch it calls gevent.monkey.patch_all() first. Before serving for good, it sends
itself one request from the thread (and greenlet) that runs the producer's hub.
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
from tests.handlers import fair


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workers = int(sys.argv[sys.argv.index("--workers") + 1]) if "--workers" in sys.argv else 2
    producer = gaspar2.Producer(fair, 0, processes=workers)
    gevent.spawn(say_hello, producer)
    producer.start()


def say_hello(producer):
    producer.running.wait()
    url = "%s:%d" % producer.address
    reply = gaspar2.client.request(url, b"quick::hello-from-the-hub", timeout=30)
    logging.info("self-request answered %r", reply)


if __name__ == "__main__":
    main()
