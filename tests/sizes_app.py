"""A gevent program that embeds a Producer, for the size sweep (tests/integration/test_sizes.py).

    python tests/sizes_app.py MODULE:ATTR [--patch] [--wsgi] [--workers N]
                              [--max-message-size BYTES] [--request-timeout S]
                              [--graceful-timeout S]

With --patch it calls gevent.monkey.patch_all() before anything else is imported. It logs
the producer's "serving ... on HOST:PORT with N workers" line. With --wsgi it also serves a
gevent.pywsgi application on a free port, logged as "http on HOST:PORT": a POST to any path
sends the request body to the producer with gaspar2.client.request and answers 200 with the
reply, 502 when the request was reset, 504 when it failed otherwise (no reply within
--request-timeout seconds included). SIGTERM or SIGINT stops it (the producer's own
handlers). It also logs whether the socket module is patched and where gaspar2 came from.
"""

import sys

if "--patch" in sys.argv:
    from gevent import monkey
    monkey.patch_all()

import argparse
import logging
import os

import gevent

import gaspar2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

log = logging.getLogger("sizes_app")


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--patch", action="store_true")
    parser.add_argument("--wsgi", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-message-size", type=int, default=None)
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--graceful-timeout", type=float, default=None)
    parser.add_argument("--shm-threshold", type=int, default=None)
    return parser.parse_args(argv)


def application(producer, timeout=30.0):
    """The WSGI app: POST body -> gaspar2 request -> response body."""

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] != "POST":
            start_response("405 Method Not Allowed", [("Content-Length", "0")])
            return [b""]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        url = "%s:%d" % producer.address
        try:
            reply = gaspar2.client.request(url, body, timeout=timeout)
            status = "200 OK"
        except gaspar2.client.RequestReset:
            status, reply = "502 Bad Gateway", b"reset"
        except gaspar2.client.RequestFailed as exc:
            status, reply = "504 Gateway Timeout", str(exc).encode()
        start_response(status, [("Content-Type", "application/octet-stream"),
                                ("Content-Length", str(len(reply)))])
        return [reply]

    return app


def main():
    args = parse(sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = {}
    if args.max_message_size is not None:
        options["max_message_size"] = args.max_message_size
    if args.graceful_timeout is not None:
        options["graceful_timeout"] = args.graceful_timeout
    if args.shm_threshold is not None:
        options["shm_threshold"] = args.shm_threshold
    producer = gaspar2.Producer(args.target, 0, processes=args.workers, **options)
    http = None
    if args.wsgi:
        from gevent.pywsgi import WSGIServer
        http = WSGIServer(("127.0.0.1", 0), application(producer, args.request_timeout),
                          log=None)
        gevent.spawn(serve_http, producer, http)
    from gevent import monkey
    log.info("socket patched: %s; gaspar2 from %s", monkey.is_module_patched("socket"),
             os.path.dirname(os.path.abspath(gaspar2.__file__)))
    producer.start()
    if http is not None:
        http.stop(timeout=5)


def serve_http(producer, http):
    producer.running.wait()
    http.start()
    log.info("http on %s:%d", *http.address[:2])


if __name__ == "__main__":
    main()
