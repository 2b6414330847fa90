"""What the outside world sees of a producer: the addresses it listens on (and what the front
end does once a reply is written there), the metrics and health server, and what systemd is
told. The producer decides when; this module knows how."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..frontend import listeners
from ..frontend.delivery import after_reply
from ..logs import counted
from . import metrics, systemd
from .metrics import Observer


class Exposure:
    def __init__(self, settings: Any, loop: Any, path: Any, name: str):
        self.settings = settings
        self.loop = loop
        self.path = path
        self.name = name
        self.notifier = systemd.Notifier.from_environment()
        self.activated = systemd.listen_fds()
        self.reload_watch = systemd.ReloadWatch(loop, self.notifier, path.supervisor,
                                                self.serving_line)
        self.address: tuple[str, int] | None = None     # the first TCP listener's
        self.label = ""                 # how logs and titles name the first TCP listener
        self.addresses: list[str] = []  # every listener's, once serving

    def observe(self, health: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        """Start the metrics and health server and the access log, when asked for."""
        s, path = self.settings, self.path
        if s.metrics or s.access_log:
            gauges = metrics.gauges(path, path.dispatcher, path.ready_count)
            gauges.update(metrics.bounds_gauges(path.counts))
            path.observer = Observer(gauges, s.metrics, s.access_log, health,
                                     s.metrics_read_timeout, path.fds)

    def listen(self) -> None:
        """Open every address (or take systemd's sockets) and hand them to the front end."""
        s, path = self.settings, self.path
        opened = listeners.open_all(s.bind, s.backlog, s.unix_socket_mode, self.activated)
        path.listen(opened)
        path.after_reply = after_reply(self.loop, path, opened, path.observer is not None)
        self.addresses, self.label, self.address = listeners.announce(opened, self.activated)

    def serving_line(self) -> str:
        return "serving %s on %s with %s" % (self.name, self.label,
                                             counted(self.path.supervisor.size, "worker"))
