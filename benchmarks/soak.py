"""Soak test: many requests against one gaspar2 server, watching for failures and for leaks.

    python benchmarks/soak.py [--requests 1000000] [--concurrency 128] [--workers W]
                              [--target gaspar2.examples:echo] [--size 100] [--leg 100000]

Starts ``gaspar2 serve``, sends the requests with the load generator in legs (100,000
requests each by default), and after each leg reads the producer's resident memory (VmRSS)
and the machine's shared memory (``Shmem`` in /proc/meminfo, which holds the arena that
large payloads travel in, and everything in /dev/shm). Growth is measured from after the
first leg (when caches, pools and the arena's pages have reached their size) to the end.
Exits 1 on any failed request, a growth of the producer's memory of 10% or more, or a
growth of shared memory of more than 16 MiB.

    python benchmarks/soak.py --size 1048576 --concurrency 8 --requests 100000 --leg 20000
"""

import argparse
import json
import os
import subprocess
import sys

from common import BUILD, Server, build

MAX_GROWTH_PERCENT = 10.0
MAX_SHMEM_GROWTH_KIB = 16 * 1024


def kib(path, field):
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in %s" % (field, path))


def legs(total, leg):
    """Request counts per leg: the first one is the warm-up the growth is measured from."""
    first = min(leg, max(1, total // 2))
    sizes, left = [first], total - first
    while left > 0:
        sizes.append(min(leg, left))
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
    """Run the legs; returns the failures and the (RSS, Shmem) samples in KiB."""
    failures, done, samples = 0, 0, []
    for count in legs(args.requests, args.leg):
        _ok, failed, errors = send(server.port, count, args)
        failures += failed
        done += count
        if server.proc.poll() is not None:
            print("the server exited (code %s)" % server.proc.returncode, file=sys.stderr)
            return failures + args.requests - done, samples or [(0, 0)]
        samples.append((kib("/proc/%d/status" % server.proc.pid, "VmRSS"),
                        kib("/proc/meminfo", "Shmem")))
        kinds = ", ".join("%s %d" % kv for kv in errors.items() if kv[1])
        print("%9d requests, %d failed%s; producer RSS %.1f MiB, shared memory %.1f MiB" % (
            done, failures, " (%s)" % kinds if kinds else "", samples[-1][0] / 1024,
            samples[-1][1] / 1024), flush=True)
    return failures, samples


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--target", default="gaspar2.examples:echo", metavar="MODULE:ATTR")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (echo)")
    parser.add_argument("--leg", type=int, default=100_000, help="requests between samples")
    parser.add_argument("--log", default=os.path.join(BUILD, "soak-gaspar2.log"))
    args = parser.parse_args()
    build(["loadgen"])
    cmd = [sys.executable, "-m", "gaspar2", "serve", args.target, "--port", "0",
           "--workers", str(args.workers)]
    with Server(cmd, args.log) as server:
        failures, samples = soak(server, args)
    (first, shm_first), (last, shm_last) = samples[0], samples[-1]
    growth = 100.0 * (last - first) / first if first else float("inf")
    print(json.dumps({"requests": args.requests, "failures": failures, "rss_first_kib": first,
                      "rss_last_kib": last, "growth_percent": round(growth, 2),
                      "shmem_first_kib": shm_first, "shmem_last_kib": shm_last}))
    ok = (failures == 0 and growth < MAX_GROWTH_PERCENT
          and shm_last - shm_first <= MAX_SHMEM_GROWTH_KIB)
    print("soak %s: %d failures, producer RSS %+.1f%% (%.1f -> %.1f MiB), shared memory "
          "%+.1f MiB" % ("passed" if ok else "FAILED", failures, growth, first / 1024,
                         last / 1024, (shm_last - shm_first) / 1024))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
