"""What operators can see: Prometheus metrics and the access log, both off by default.

The producer calls ``request_done`` once per request, whatever its outcome, and
``worker_exited`` once per worker exit; nothing here runs when both are off.
"""

import logging

access_log = logging.getLogger("gaspar2.access")
log = logging.getLogger("gaspar2")

OUTCOMES = ("ok", "handler_error", "timeout", "worker_died", "bad_frame", "refused", "client_gone")


class Observer:
    def __init__(self, producer, metrics_address, access):
        self.access = access
        self.metrics = Metrics(producer, metrics_address) if metrics_address else None

    def request_done(self, conn, outcome, now):
        seconds = now - conn.accepted
        size_in = len(conn.payload) if conn.payload is not None else 0
        if self.metrics is not None:
            self.metrics.request_done(outcome, seconds, size_in, conn.size_out)
        if self.access:
            access_log.info("%s %s in=%d out=%d %.1fms worker=%s", conn, outcome, size_in,
                            conn.size_out if outcome == "ok" else 0, seconds * 1000,
                            conn.served_by if conn.served_by is not None else "-")

    def worker_exited(self, kind):
        if self.metrics is not None:
            self.metrics.restarts.labels(kind).inc()


class Metrics:
    """Prometheus metrics, served over HTTP from the producer's own gevent loop."""

    def __init__(self, producer, address):
        try:
            import prometheus_client as prom
        except ImportError:
            raise RuntimeError("--metrics needs prometheus-client: pip install 'gaspar2[metrics]'")
        from gevent.pywsgi import WSGIServer

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
        gauges = {
            "gaspar2_requests_at_workers": ("Requests handed to a worker", lambda: len(producer.jobs)),
            "gaspar2_requests_waiting": ("Requests waiting for a free worker",
                                         lambda: len(producer.backlog)),
            "gaspar2_connections": ("Open client connections", lambda: len(producer.conns)),
            "gaspar2_workers": ("Live, ready workers", producer.supervisor.ready_count),
        }
        for name, (text, read) in gauges.items():
            prom.Gauge(name, text, registry=registry).set_function(read)
        host, _, port = address.rpartition(":")
        self.server = WSGIServer((host or "127.0.0.1", int(port)), prom.make_wsgi_app(registry),
                                 log=None)
        self.server.start()
        log.info("metrics on http://%s:%d/metrics", *self.server.address[:2])

    def request_done(self, outcome, seconds, size_in, size_out):
        self.requests.labels(outcome).inc()
        self.latency.observe(seconds)
        self.bytes_in.inc(size_in)
        if outcome == "ok":
            self.bytes_out.inc(size_out)
