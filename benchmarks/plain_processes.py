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

from gaspar2.workers.process import pin_malloc

from common import load_handler, page_faults


def work(spec, message, warmup, duration, barrier, results):
    """Call the handler for ``warmup`` seconds, then count calls for ``duration`` seconds;
    puts (calls, seconds, page faults) of the counted ones."""
    pin_malloc()        # the ceiling runs with the allocator settings gaspar2's workers use
    handler = load_handler(spec)
    barrier.wait(60)
    for deadline in (time.perf_counter() + warmup, None):
        faults = page_faults(os.getpid())
        began, calls = time.perf_counter(), 0
        deadline = deadline or began + duration
        while time.perf_counter() < deadline:
            handler(message)
            calls += 1
    seconds = time.perf_counter() - began
    results.put((calls, seconds, page_faults(os.getpid()) - faults))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", metavar="MODULE:ATTR")
    payload = parser.add_mutually_exclusive_group(required=True)
    payload.add_argument("--message", help="the request payload (ASCII)")
    payload.add_argument("--message-file", help="the request payload, from a file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    if args.message_file:
        with open(args.message_file, "rb") as f:
            message = f.read()
    else:
        message = args.message.encode()
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(args.workers), ctx.Queue()
    procs = [ctx.Process(target=work, args=(args.target, message, args.warmup,
                                            args.duration, barrier, results))
             for _ in range(args.workers)]
    for p in procs:
        p.start()
    done = [results.get(timeout=args.warmup + args.duration + 120) for _ in procs]
    for p in procs:
        p.join(30)
    rps = sum(calls / seconds for calls, seconds, _ in done)
    print(json.dumps({"rps": round(rps, 1), "requests": sum(c for c, _, _ in done),
                      "seconds": args.duration, "workers": args.workers,
                      "faults": sum(f for _, _, f in done)}))


if __name__ == "__main__":
    main()
