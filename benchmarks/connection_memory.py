"""What a connection costs the producer: its memory per idle connection, and per frame
announced but not sent (a 4-byte header claiming ``--announce`` bytes, and one byte).

    python benchmarks/connection_memory.py [--connections 2000] [--announce 64MiB]

It starts ``gaspar2 serve gaspar2.examples:echo``, opens the connections from this process,
waits until the producer has accepted (and read) them all, and reports the growth of the
producer's resident memory divided by their number, as one JSON line and one sentence.
"""

import argparse
import json
import os
import resource
import socket
import struct
import sys
import time

from common import BUILD, Server
from soak import vm_rss_kib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gaspar2.settings import size


def open_connections(port, count, first_bytes):
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        if first_bytes:
            sock.sendall(first_bytes)
        socks.append(sock)
    return socks


def settled(pid, seconds=1.0, step=0.1):
    """The producer's RSS once it has stopped changing for ``seconds``."""
    last, stable = vm_rss_kib(pid), 0.0
    while stable < seconds:
        time.sleep(step)            # sampling a number that settles, not synchronising
        now = vm_rss_kib(pid)
        stable = stable + step if now == last else 0.0
        last = now
    return last


def measure(server, count, first_bytes):
    base = settled(server.proc.pid)
    socks = open_connections(server.port, count, first_bytes)
    held = settled(server.proc.pid)
    for sock in socks:
        sock.close()
    return (held - base) * 1024 / count


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--announce", type=size, default="64MiB")
    parser.add_argument("--log", default=os.path.join(BUILD, "connection-memory.log"))
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.makedirs(BUILD, exist_ok=True)
    cmd = [sys.executable, "-m", "gaspar2", "serve", "gaspar2.examples:echo", "--port", "0",
           "--workers", "1", "--read-timeout", "600"]
    with Server(cmd, args.log) as server:
        idle = measure(server, args.connections, b"")
        announced = measure(server, args.connections, struct.pack("!I", args.announce) + b"x")
    print(json.dumps({"connections": args.connections, "announced_bytes": args.announce,
                      "bytes_per_idle_connection": round(idle),
                      "bytes_per_announced_frame": round(announced)}))
    print("producer memory: %.1f KiB per idle connection, %.1f KiB per frame announcing "
          "%d bytes and sending 1" % (idle / 1024, announced / 1024, args.announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
