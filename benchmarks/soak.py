"""Soak test: many requests against one gaspar2 server, watching for failures and for leaks.

    python benchmarks/soak.py [--requests 1000000] [--concurrency 128] [--workers W]
                              [--target gaspar2.examples:echo] [--size 100]

Starts ``gaspar2 serve``, sends the requests with the load generator in legs of 100,000,
and reads the producer's resident memory (VmRSS) after each leg. The growth is measured
from after the first 100,000 requests (when caches and pools have reached their size) to
the end. Exits 1 on any failed request or a growth of 10% or more.
"""

import argparse
import json
import os
import subprocess
import sys

from common import BUILD, Server, build

LEG = 100_000
MAX_GROWTH_PERCENT = 10.0


def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def legs(total):
    """Request counts per leg: the first one is the warm-up the growth is measured from."""
    first = min(LEG, max(1, total // 2))
    sizes, left = [first], total - first
    while left > 0:
        sizes.append(min(LEG, left))
        left -= sizes[-1]
    return sizes


def send(port, count, args):
    """One load generator run of exactly ``count`` requests; returns (ok, failed, errors)."""
    cmd = [os.path.join(BUILD, "loadgen"), "-p", str(port), "-c", str(args.concurrency),
           "-n", str(count), "-w", "0", "-s", str(args.size), "-t", "10", "-d", "600"]
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                       timeout=660).stdout)
    return result["requests"], count - result["requests"], result["errors"]


def soak(server, args):
    """Run the legs; returns (failures, RSS after the first leg, RSS at the end) in KiB."""
    failures, done, samples = 0, 0, []
    for count in legs(args.requests):
        ok, failed, errors = send(server.port, count, args)
        failures += failed
        done += count
        if server.proc.poll() is not None:
            print("the server exited (code %s)" % server.proc.returncode, file=sys.stderr)
            return failures + args.requests - done, samples[0] if samples else 0, 0
        samples.append(vm_rss_kib(server.proc.pid))
        kinds = ", ".join("%s %d" % kv for kv in errors.items() if kv[1])
        print("%9d requests, %d failed%s; producer RSS %.1f MiB" % (
            done, failures, " (%s)" % kinds if kinds else "", samples[-1] / 1024), flush=True)
    return failures, samples[0], samples[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--target", default="gaspar2.examples:echo", metavar="MODULE:ATTR")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (echo)")
    parser.add_argument("--log", default=os.path.join(BUILD, "soak-gaspar2.log"))
    args = parser.parse_args()
    build(["loadgen"])
    cmd = [sys.executable, "-m", "gaspar2", "serve", args.target, "--port", "0",
           "--workers", str(args.workers)]
    with Server(cmd, args.log) as server:
        failures, first, last = soak(server, args)
    growth = 100.0 * (last - first) / first if first else float("inf")
    print(json.dumps({"requests": args.requests, "failures": failures, "rss_first_kib": first,
                      "rss_last_kib": last, "growth_percent": round(growth, 2)}))
    ok = failures == 0 and growth < MAX_GROWTH_PERCENT
    print("soak %s: %d failures, producer RSS %+.1f%% (%.1f -> %.1f MiB)" % (
        "passed" if ok else "FAILED", failures, growth, first / 1024, last / 1024))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
