"""Fork-free unit tests: plain objects stand for workers, sockets and the fork server."""
