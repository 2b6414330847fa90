"""Baseline for CPU work: W plain processes calling the handler in a loop, no networking.

The machine's own ceiling for that work: no server can do more calls per second with W
processes. Prints one JSON object: calls per second of all processes together ("rps").

    python benchmarks/plain_processes.py MODULE:ATTR --message 1000 [--workers W] [--duration S]
"""

import argparse
import json
import multiprocessing
import os
import time

from common import load_handler


def work(spec, message, warmup, duration, barrier, results):
    """Call the handler for ``warmup`` seconds, then count calls for ``duration`` seconds."""
    handler = load_handler(spec)
    barrier.wait(60)
    for deadline in (time.perf_counter() + warmup, None):
        began, calls = time.perf_counter(), 0
        deadline = deadline or began + duration
        while time.perf_counter() < deadline:
            handler(message)
            calls += 1
    results.put((calls, time.perf_counter() - began))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", metavar="MODULE:ATTR")
    parser.add_argument("--message", required=True, help="the request payload (ASCII)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(args.workers), ctx.Queue()
    procs = [ctx.Process(target=work, args=(args.target, args.message.encode(), args.warmup,
                                            args.duration, barrier, results))
             for _ in range(args.workers)]
    for p in procs:
        p.start()
    done = [results.get(timeout=args.warmup + args.duration + 120) for _ in procs]
    for p in procs:
        p.join(30)
    rps = sum(calls / seconds for calls, seconds in done)
    print(json.dumps({"rps": round(rps, 1), "requests": sum(c for c, _ in done),
                      "seconds": args.duration, "workers": args.workers}))


if __name__ == "__main__":
    main()
