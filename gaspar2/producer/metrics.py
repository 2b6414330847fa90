"""What operators can see: Prometheus metrics, the health endpoint and the access log, all
off by default.

The producer calls ``request_done`` once per request, whatever its outcome, and
``worker_exited`` once per worker exit; nothing here runs when both are off. Gauges and the
health endpoint read the producer's state through the callables they are given, never its
attributes.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import greenlet
from gevent.hub import Hub

from ..frontend.fds import FdReserve, count_open, open_file_limit
from ..frontend.httpd import HttpServer

access_log = logging.getLogger("gaspar2.access")
log = logging.getLogger("gaspar2")

METRICS_CONNECTIONS = 1024  # open at once, at most (see connections_for)
METRICS_IDLE = 10.0         # seconds a metrics client may take to read its reply

GREENLETS_EVERY = 1.0       # seconds between two counts of the greenlets (a heap walk)

OUTCOMES = ("ok", "handler_error", "timeout", "worker_died", "bad_frame", "refused", "client_gone")


Gauges = dict[str, tuple[str, Callable[[], float]]]    # name -> (help, read)
Health = Callable[[], tuple[bool, dict[str, Any]]]      # -> (healthy, counts)


def connections_for(file_limit: int) -> int:
    """How many connections the metrics port holds: a sixteenth of the open-file limit,
    from 16 to METRICS_CONNECTIONS. The more it holds, the larger a crowd must be before
    connections are dropped to make room, and the longer a new one is safe from that."""
    return min(METRICS_CONNECTIONS, max(16, file_limit // 16))


def status(frontend: Any, dispatcher: Any, workers: int) -> dict[str, int]:
    """The producer's counts: connections, requests at each stage, workers, resources."""
    return {
        "accepted": frontend.accepted,
        "connections": len(frontend.conns),
        "reading": frontend.reading(),
        "waiting": len(dispatcher.waiting),
        "at_workers": dispatcher.at_workers(),
        "workers": workers,
        "greenlets": greenlets(),
        "open_files": count_open(),
    }


_counted = [-GREENLETS_EVERY, 0]     # when, how many


def greenlets(clock: Callable[[], float] = time.monotonic) -> int:
    """The greenlets alive. Counting walks every object of the heap: asked from the loop
    itself (a /healthz request, however many come), the count is at most GREENLETS_EVERY
    old, since a walk there stalls every client; asked from a greenlet of its own (the
    status line SIGUSR2 asks for), it is counted anew."""
    now = clock()
    if now - _counted[0] >= GREENLETS_EVERY or not isinstance(greenlet.getcurrent(), Hub):
        _counted[:] = now, sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet))
    return int(_counted[1])


def health(state: str, counts: dict[str, int]) -> tuple[bool, dict[str, Any]]:
    """Healthy while at least one worker is ready and not every one has run its request
    past warn_after while others wait (no request could be served then); the body: the
    state, the counts, and in that second case a ``reason``."""
    body: dict[str, Any] = {"state": state, **counts}
    workers, waiting = counts["workers"], counts.get("waiting", 0)
    if workers > 0 and waiting and counts.get("workers_stuck", 0) >= workers:
        body["reason"] = ("every worker has run one request past warn_after, and %d "
                          "requests wait" % waiting)
        return False, body
    return workers > 0, body


def gauges(frontend: Any, dispatcher: Any, ready_count: Callable[[], int]) -> Gauges:
    return {
        "gaspar2_requests_at_workers": ("Requests handed to a worker", dispatcher.at_workers),
        "gaspar2_requests_waiting": ("Requests waiting for a free worker",
                                     lambda: len(dispatcher.waiting)),
        "gaspar2_connections": ("Open client connections", lambda: len(frontend.conns)),
        "gaspar2_workers": ("Live, ready workers", ready_count),
    }


def bounds_gauges(counts: Callable[[], dict[str, int]]) -> Gauges:
    return {
        "gaspar2_buffered_bytes": ("Bytes held for requests and replies (buffer_limit)",
                                   lambda: counts()["buffered"]),
        "gaspar2_dropped_messages": ("Worker messages dropped since start: malformed, from "
                                     "a sender that is not who it says, or for a request "
                                     "it does not hold", lambda: counts()["dropped"]),
        "gaspar2_remote_connections": ("Connections open on the remote-workers endpoint",
                                       lambda: counts()["remote_connections"]),
        "gaspar2_workers_stuck": ("Local workers running one request past warn_after",
                                  lambda: counts()["workers_stuck"]),
    }


class Observer:
    def __init__(self, gauges: Gauges, metrics_address: str | None, access: bool,
                 health: Health | None = None, header_timeout: float = 5.0,
                 fds: FdReserve | None = None):
        self.access = access
        self.metrics = (Metrics(gauges, metrics_address, health, header_timeout, fds)
                        if metrics_address else None)

    def request_done(self, conn: Any, outcome: str, now: float) -> None:
        seconds = now - conn.accepted
        size_in = conn.size_in
        if self.metrics is not None:
            self.metrics.request_done(outcome, seconds, size_in, conn.size_out)
        if self.access:
            fields = {"client": str(conn), "outcome": outcome, "bytes_in": size_in,
                      "bytes_out": conn.size_out if outcome == "ok" else 0,
                      "ms": round(seconds * 1000, 1), "worker": conn.served_by}
            access_log.info("%s %s in=%d out=%d %.1fms worker=%s", fields["client"], outcome,
                            size_in, fields["bytes_out"], seconds * 1000,
                            "-" if conn.served_by is None else conn.served_by, extra=fields)

    def worker_exited(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.restarts.labels(kind).inc()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.server.stop()


class Metrics:
    """Prometheus metrics, served over HTTP from the producer's own gevent loop, by a server
    that no crowd of connections can keep a health checker out of (see httpd.py)."""

    def __init__(self, gauges: Gauges, address: str, health: Health | None = None,
                 header_timeout: float = 5.0, fds: FdReserve | None = None):
        try:
            import prometheus_client as prom
        except ImportError:
            raise RuntimeError("--metrics needs prometheus-client: "
                               "pip install 'gaspar2[metrics]'") from None
        import gevent

        registry = prom.CollectorRegistry()
        self.requests = prom.Counter("gaspar2_requests", "Requests by outcome", ["outcome"],
                                     registry=registry)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.latency = prom.Histogram(
            "gaspar2_request_seconds", "From accept to reply written or failure",
            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
            registry=registry)
        self.bytes_in = prom.Counter("gaspar2_received_bytes", "Request payload bytes",
                                     registry=registry)
        self.bytes_out = prom.Counter("gaspar2_sent_bytes", "Reply bytes", registry=registry)
        self.restarts = prom.Counter("gaspar2_worker_exits", "Worker exits by cause", ["cause"],
                                     registry=registry)
        for name, (text, read) in gauges.items():
            prom.Gauge(name, text, registry=registry).set_function(read)
        host, _, port = address.rpartition(":")
        app = prom.make_wsgi_app(registry)
        if health is not None:
            app = health_app(health, app)
        cap = connections_for(open_file_limit())
        try:
            self.server = HttpServer(gevent.get_hub().loop, host.strip("[]") or "127.0.0.1",
                                     int(port), app, header_timeout, METRICS_IDLE, cap)
        except OSError as exc:
            raise OSError(exc.errno, "cannot serve metrics on %s: %s"
                          % (address, exc.strerror)) from exc
        if fds is not None:
            fds.set_aside(cap + 1)      # and one for the listening socket
        self.server.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz",
                 *self.server.address[:2])

    def request_done(self, outcome: str, seconds: float, size_in: int, size_out: int) -> None:
        self.requests.labels(outcome).inc()
        self.latency.observe(seconds)
        self.bytes_in.inc(size_in)
        if outcome == "ok":
            self.bytes_out.inc(size_out)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]


def health_app(health: Health, metrics_app: WSGIApp) -> WSGIApp:
    """``GET /healthz``: 200 while a worker is ready, else 503, with the counts as one line of
    JSON; every other path goes to ``metrics_app``."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        healthy, counts = health()
        body = (json.dumps(counts, separators=(",", ":")) + "\n").encode()
        start_response("200 OK" if healthy else "503 Service Unavailable",
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return [body]
    return app
