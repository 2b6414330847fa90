"""The ratios gaspar2 is judged by, and the text report of a run's results."""

SERVER_ORDER = ("c-echo", "gevent-inline", "asyncio-ppe", "plain-processes", "design-card",
                "shape-floor", "gaspar2", "gaspar2-exec-c", "remote-python", "remote-c")

# (label, numerator point, denominator point, which way is better, goal)
# A point is (workload, server, key) in the table of medians.
RATIOS = [
    # Small requests are judged against the design's own ceiling (shape-floor, below); beside
    # one gevent process or asyncio these ratios are shown for information.
    ("echo 100 B c=32 req/s, gaspar2 / gevent-inline",
     ("echo-100B-c32", "gaspar2", "rps"), ("echo-100B-c32", "gevent-inline", "rps"), "higher", None),
    ("echo 100 B c=32 req/s, gaspar2 / asyncio-ppe",
     ("echo-100B-c32", "gaspar2", "rps"), ("echo-100B-c32", "asyncio-ppe", "rps"), "higher", None),
    ("echo 100 B c=1 p50, gaspar2 / gevent-inline",
     ("echo-100B-c1", "gaspar2", "p50_ms"), ("echo-100B-c1", "gevent-inline", "p50_ms"), "lower", None),
    ("echo 64 KiB c=32 MB/s, gaspar2 / gevent-inline",
     ("echo-64KiB-c32", "gaspar2", "mb_per_s"), ("echo-64KiB-c32", "gevent-inline", "mb_per_s"), "higher", 0.8),
    ("echo 200 KiB c=32 MB/s, gaspar2 / gevent-inline",
     ("echo-200KiB-c32", "gaspar2", "mb_per_s"), ("echo-200KiB-c32", "gevent-inline", "mb_per_s"), "higher", 0.8),
    ("echo 1 MiB c=4 MB/s, gaspar2 / gevent-inline",
     ("echo-1MiB-c4", "gaspar2", "mb_per_s"), ("echo-1MiB-c4", "gevent-inline", "mb_per_s"), "higher", 0.8),
    ("echo 8 MiB c=2 MB/s, gaspar2 / gevent-inline",
     ("echo-8MiB-c2", "gaspar2", "mb_per_s"), ("echo-8MiB-c2", "gevent-inline", "mb_per_s"), "higher", 0.8),
    ("sha256 1 ms calls/s, gaspar2 / plain-processes",
     ("sha-1ms-c32", "gaspar2", "rps"), ("sha-1ms-c32", "plain-processes", "rps"), "higher", 0.8),
    ("sha256 10 ms calls/s, gaspar2 / plain-processes",
     ("sha-10ms-c32", "gaspar2", "rps"), ("sha-10ms-c32", "plain-processes", "rps"), "higher", 0.9),
    ("sha256 1 ms calls/s, gaspar2 / asyncio-ppe",
     ("sha-1ms-c32", "gaspar2", "rps"), ("sha-1ms-c32", "asyncio-ppe", "rps"), "higher", 1.0),
    ("sha256 10 ms calls/s, gaspar2 / asyncio-ppe",
     ("sha-10ms-c32", "gaspar2", "rps"), ("sha-10ms-c32", "asyncio-ppe", "rps"), "higher", 1.0),
    ("thumbnails c=32 req/s, gaspar2 / asyncio-ppe",
     ("thumb-200KB-c32", "gaspar2", "rps"), ("thumb-200KB-c32", "asyncio-ppe", "rps"), "higher", 1.1),
    ("thumbnails c=32 calls/s, gaspar2 / plain-processes",
     ("thumb-200KB-c32", "gaspar2", "rps"), ("thumb-200KB-c32", "plain-processes", "rps"), "higher", 0.9),
    ("echo 100 B c=32 req/s, gaspar2 / design-card",
     ("echo-100B-c32", "gaspar2", "rps"), ("echo-100B-c32", "design-card", "rps"), "higher", None),
    ("echo 100 B c=1 p50, gaspar2 / design-card",
     ("echo-100B-c1", "gaspar2", "p50_ms"), ("echo-100B-c1", "design-card", "p50_ms"), "lower", None),
    ("sha256 1 ms calls/s, gaspar2 / design-card",
     ("sha-1ms-c32", "gaspar2", "rps"), ("sha-1ms-c32", "design-card", "rps"), "higher", None),
    # The shape with nothing but its shape (shape_floor.py): what the goals above leave of it.
    ("echo 100 B c=32 req/s, shape-floor / gevent-inline",
     ("echo-100B-c32", "shape-floor", "rps"), ("echo-100B-c32", "gevent-inline", "rps"), "higher", None),
    ("echo 100 B c=1 p50, shape-floor / gevent-inline",
     ("echo-100B-c1", "shape-floor", "p50_ms"), ("echo-100B-c1", "gevent-inline", "p50_ms"), "lower", None),
    ("sha256 1 ms calls/s, shape-floor / plain-processes",
     ("sha-1ms-c32", "shape-floor", "rps"), ("sha-1ms-c32", "plain-processes", "rps"), "higher", None),
    ("echo 100 B c=32 req/s, gaspar2 / shape-floor",
     ("echo-100B-c32", "gaspar2", "rps"), ("echo-100B-c32", "shape-floor", "rps"), "higher", 0.97),
    ("echo 100 B c=1 p50, gaspar2 / shape-floor",
     ("echo-100B-c1", "gaspar2", "p50_ms"), ("echo-100B-c1", "shape-floor", "p50_ms"), "lower", 1.3),
    ("sha256 1 ms calls/s, gaspar2 / shape-floor",
     ("sha-1ms-c32", "gaspar2", "rps"), ("sha-1ms-c32", "shape-floor", "rps"), "higher", 0.97),
    # The producer process's CPU time (user + system, all its threads) per request answered.
    ("producer CPU per request, echo 100 B c=32, gaspar2 / shape-floor",
     ("echo-100B-c32", "gaspar2", "cpu_us_per_req"), ("echo-100B-c32", "shape-floor", "cpu_us_per_req"),
     "lower", 1.1),
    ("producer CPU per request, sha256 1 ms, gaspar2 / shape-floor",
     ("sha-1ms-c32", "gaspar2", "cpu_us_per_req"), ("sha-1ms-c32", "shape-floor", "cpu_us_per_req"),
     "lower", 1.1),
    # A program behind gaspar2 (serve --exec, the C example worker) against the Python echo:
    # the child's pipe costs its worker, not the producer.
    ("echo 100 B c=32 req/s, gaspar2-exec-c / gaspar2",
     ("echo-100B-c32", "gaspar2-exec-c", "rps"), ("echo-100B-c32", "gaspar2", "rps"), "higher", 0.75),
    ("producer CPU per request, echo 100 B c=32, gaspar2-exec-c / gaspar2",
     ("echo-100B-c32", "gaspar2-exec-c", "cpu_us_per_req"), ("echo-100B-c32", "gaspar2", "cpu_us_per_req"),
     "lower", 1.1),
    # One request at a time: the same work per request for the producer, whatever the workers'
    # pace (at c=32 fewer replies per wake-up cost it more per request; see the README).
    ("producer CPU per request, echo 100 B c=1, gaspar2-exec-c / gaspar2",
     ("echo-100B-c1", "gaspar2-exec-c", "cpu_us_per_req"), ("echo-100B-c1", "gaspar2", "cpu_us_per_req"),
     "lower", 1.1),
    # Two remote workers joined to one producer over loopback TCP: the C worker library's
    # example against `gaspar2 worker`, the same echo.
    ("echo 100 B c=32 req/s, remote-c / remote-python",
     ("echo-100B-c32", "remote-c", "rps"), ("echo-100B-c32", "remote-python", "rps"), "higher", 1.0),
    ("quick p99 with 200 ms jobs / alone, gaspar2",
     ("mixed-c32", "gaspar2", "p99_ms"), ("quick-c32", "gaspar2", "p99_ms"), "lower", 3.0),
    # A GIL-holding job also takes a core from the quick requests: shown, not judged.
    ("quick p99 with 200 ms GIL-holding jobs / alone, gaspar2",
     ("gil-mixed-c32", "gaspar2", "p99_ms"), ("quick-c32", "gaspar2", "p99_ms"), "lower", None),
    ("quick max with 200 ms GIL-holding jobs, gaspar2 / design-card",
     ("gil-mixed-c32", "gaspar2", "max_ms"), ("gil-mixed-c32", "design-card", "max_ms"), "lower", None),
]
# The same, but the ratio of the two points' figures within each round, and the worst round's
# judged: the goal holds in every round, not only for the medians.
ROUND_RATIOS = [
    ("thumbnails c=32 req/s, gaspar2 / asyncio-ppe, worst round",
     ("thumb-200KB-c32", "gaspar2", "rps"), ("thumb-200KB-c32", "asyncio-ppe", "rps"), "higher", 1.0),
]
# The same, but the difference of the two points' medians, in microseconds (from milliseconds).
DIFFERENCES = [
    ("echo 100 B c=1 p50, gaspar2-exec-c - gaspar2, us",
     ("echo-100B-c1", "gaspar2-exec-c", "p50_ms"), ("echo-100B-c1", "gaspar2", "p50_ms"), "lower", 40),
]
HEADROOM_GOAL = 1.2        # the load generator must not be what limits gaspar2
# Python calls per request on the producer's thread and in a worker (calls.py), at most.
CALLS_GOALS = {"producer": 25, "worker": 12}
FAULTS_GOAL = 100          # gaspar2's workers' page faults per request stay below it at every point


def server_rank(server):
    """Where a server's rows go: the known ones in order, SERVER@REV right after SERVER."""
    base = server.split("@")[0]
    if base in SERVER_ORDER:
        return (SERVER_ORDER.index(base), server)
    return (len(SERVER_ORDER), server)


def revision_lines(points):
    """Each server against itself at each REV (gaspar2 / gaspar2@REV, gaspar2-exec-c /
    gaspar2-exec-c@REV), workload by workload: req/s, and p99 where it measures latency."""
    rows = {(p["workload"], p["server"]): p for p in points if "error" not in p}
    lines = []
    for (workload, server), at in rows.items():
        base = server.split("@")[0]
        now = rows.get((workload, base))
        if "@" not in server or now is None:
            continue
        text = "%-16s %s / %s: req/s %.3f" % (workload, base, server, now["rps"] / at["rps"])
        if at.get("p99_ms"):
            text += ", p50 %.3f, p99 %.3f" % (now["p50_ms"] / at["p50_ms"],
                                              now["p99_ms"] / at["p99_ms"])
        lines.append(text)
    return lines


def get(table, workload, server, key):
    row = table.get((workload, server))
    if not row or "error" in row:
        return None
    return row.get(key)


def judged(name, value, better, goal, strict=False, unit=None):
    """``strict``: the goal itself misses (below it for "lower", above it for "higher");
    ``unit``: the value is a difference in that unit ("us"), not a ratio."""
    met = None
    if value is not None and goal is not None:      # no goal: shown for comparison only
        if strict:
            met = value > goal if better == "higher" else value < goal
        else:
            met = value >= goal if better == "higher" else value <= goal
    found = {"name": name, "value": value, "better": better, "goal": goal, "strict": strict,
             "met": met}
    if unit is not None:
        found["unit"] = unit
    return found


def worst_round(table, top, bottom, better):
    """The worst of the rounds' ratios of two points, over the rounds where both have a figure."""
    a, b = get(table, *top[:2], "per_round"), get(table, *bottom[:2], "per_round")
    if a is None or b is None:
        return None
    ratios = [x / y for x, y in zip(a[top[2]], b[bottom[2]], strict=False) if x is not None and y]
    if not ratios:
        return None
    return min(ratios) if better == "higher" else max(ratios)


def worst_faults(table, server="gaspar2"):
    """The most page faults per request of ``server``'s workers, over its points."""
    values = [row["faults_per_req"] for (workload, s), row in table.items()
              if s == server and row.get("faults_per_req") is not None]
    return max(values) if values else None


def target_ratios(table, calls=None, judge=True):
    """Each ratio as {"name", "value", "better", "goal", "met"} (a difference with its "unit"
    too); value None if a point is missing.

    ``judge=False`` (a quick run) leaves every "met" None: 1-second points are too short to judge.
    """
    out = []
    for name, top, bottom, better, goal in RATIOS:
        a, b = get(table, *top), get(table, *bottom)
        out.append(judged(name, a / b if a is not None and b else None, better, goal))
    for name, top, bottom, better, goal in ROUND_RATIOS:
        out.append(judged(name, worst_round(table, top, bottom, better), better, goal))
    for name, top, bottom, better, goal in DIFFERENCES:
        a, b = get(table, *top), get(table, *bottom)
        out.append(judged(name, 1000 * (a - b) if a is not None and b is not None else None,
                          better, goal, unit="us"))
    out.append(judged("gaspar2 workers' page faults per request, worst point", worst_faults(table),
                      "lower", FAULTS_GOAL, strict=True))
    row = table.get(("echo-100B-c256", "gaspar2"))
    failures = None
    if row and "error" not in row:
        failures = row["errors"] + row["kernel"]["ListenOverflows"]
    out.append(judged("echo 100 B c=256, gaspar2 errors + listen overflows", failures, "lower", 0))
    out.append(judged("load generator: C echo server's best / gaspar2's best req/s",
                      headroom(table), "higher", HEADROOM_GOAL))
    for side, goal in CALLS_GOALS.items():
        out.append(judged("Python calls per 100 B request, %s (calls.py)" % side,
                          calls.get(side) if calls else None, "lower", goal))
    if not judge:
        for r in out:
            r["met"] = None
    return out


def headroom(table):
    """The load generator's best figure (against the C server) over gaspar2's best, echo 100 B."""
    def best(server):
        values = [row["rps"] for (workload, s), row in table.items()
                  if s == server and workload.startswith("echo-100B-") and "rps" in row]
        return max(values) if values else None
    c, g = best("c-echo"), best("gaspar2")
    return c / g if c is not None and g else None


def faults_text(value):
    """Page faults per request: two decimals below 100, whole numbers above; "-" for none."""
    if value is None:
        return "-"
    return "%.2f" % value if value < 100 else "%.0f" % value


MAIN_HEADER = "%-16s %-15s %8s %8s %7s %7s %7s %7s %6s %7s %7s" % (
    "workload", "server", "req/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors",
    "flt/req", "us/req")
MAIN_LEGEND = [
    "req/s: verified replies per second (plain-processes: calls/s of its W processes, no "
    "networking)",
    "MB/s: request + reply bytes per second (10^6); p50 p90 p99 max ms: one request's latency",
    "errors: requests reset, refused, timed out (10 s) or answered wrongly, summed over the rounds",
    "flt/req: page faults of the server's worker processes per request (-: a server without any)",
    "us/req: CPU time (user + system) of the server's own process per request, in microseconds",
    "  (gaspar2: its producer; plain-processes: not measured, -)",
]
KERNEL_HEADER = "%-16s %-15s %6s %6s %6s %6s %6s" % (
    "workload", "server", "ovfl", "drops", "tmo", "rexmit", "lg cpu")
KERNEL_LEGEND = [
    "ovfl, drops: ListenOverflows, ListenDrops (a full listen queue); tmo, rexmit: TCPTimeouts, "
    "RetransSegs",
    "  (segments lost and sent again); kernel counters of the whole machine, summed over the "
    "rounds",
    "lg cpu: the load generator's own CPU use during the point (100% = one core)",
]


def point_line(p):
    """One point's medians: throughput, latency, errors and per-request costs."""
    head = "%-16s %-15s" % (p["workload"], p["server"])
    if "error" in p:
        return head + " FAILED: " + p["error"][:100]
    faults = " %7s" % faults_text(p.get("faults_per_req"))
    cpu = p.get("cpu_us_per_req")
    cpu_text = " %7.1f" % cpu if cpu is not None else " %7s" % "-"
    if "p50_ms" not in p:
        return head + " %8.0f  %-46s" % (p["rps"], "(calls/s, no networking)") + faults + cpu_text
    return head + " %8.0f %8.1f %7.3f %7.3f %7.3f %7.1f %6d" % (
        p["rps"], p["mb_per_s"], p["p50_ms"], p["p90_ms"], p["p99_ms"], p["max_ms"],
        p["errors"]) + faults + cpu_text


def kernel_line(p):
    """One networked point's kernel counters and the load generator's CPU use."""
    k = p["kernel"]
    return "%-16s %-15s %6d %6d %6d %6d %5.0f%%" % (
        p["workload"], p["server"], k["ListenOverflows"], k["ListenDrops"], k["TCPTimeouts"],
        k["RetransSegs"], 100 * p["loadgen_cpu"])


def format_report(results):
    m, s = results["machine"], results["settings"]
    lines = []
    if s.get("quick"):
        lines.append("QUICK RUN, a smoke test: a 1-second point is noise, and so are the ratios "
                     "below; goals are judged on a full run only.")
    lines += ["%d CPUs, W=%d, %d round(s) of %.0f s points after %.1f s warm-up; medians; "
              "commit %s" % (m["cpus"], s["workers"], s["rounds"], s["duration"], s["warmup"],
                             m["commit"]), ""]
    order = {w["name"]: i for i, w in enumerate(results["workloads"])}
    points = sorted(results["points"],
                    key=lambda p: (order[p["workload"]], server_rank(p["server"])))
    lines += ["medians over the rounds, one line per point:", MAIN_HEADER]
    lines += [point_line(p) for p in points]
    lines += ["", *MAIN_LEGEND]
    networked = [p for p in points if "kernel" in p]
    if networked:
        lines += ["", "kernel counters and the load generator, per point:", KERNEL_HEADER]
        lines += [kernel_line(p) for p in networked]
        lines += ["", *KERNEL_LEGEND]
    slow = [p for p in points if "slow_p99_ms" in p]
    if slow:
        lines.append("")
        lines += ["%-16s %-15s 200 ms requests: %d, p50 %.1f ms, p99 %.1f ms" % (
            p["workload"], p["server"], p["slow_count"], p["slow_p50_ms"], p["slow_p99_ms"])
            for p in slow]
    ab = revision_lines(points)
    if ab:
        lines += ["", "the current code over earlier revisions (req/s above 1: faster; "
                  "latencies above 1: slower):", *ab]
    lines += ["", "calibrated (sha256_chain rounds, backtrack letters): " + ", ".join(
        "%s %d" % (name, c["rounds"]) for name, c in results["calibration"].items()), ""]
    width = max([62, *(len(r["name"]) for r in results["ratios"])])
    lines.append("ratios of medians (numerator / denominator; a - b: a difference, in its unit), "
                 "each with its goal and verdict:")
    for r in results["ratios"]:
        unit = r.get("unit")
        value = ("n/a" if r["value"] is None else "%.1f %s" % (r["value"], unit) if unit
                 else "%.3f" % r["value"])
        verdict = {None: "", True: "met", False: "MISSED"}[r["met"]]
        if s.get("quick") and r["goal"] is not None:
            verdict = "not judged"
        sign = (">" if r["better"] == "higher" else "<") + ("" if r.get("strict") else "=")
        goal = ("(%s is better)" % r["better"] if r["goal"] is None
                else "(goal %s %s%s)" % (sign, r["goal"], " " + unit if unit else ""))
        lines.append(("%-*s %8s  %s  %s" % (width, r["name"], value, goal, verdict)).rstrip())
    return "\n".join(lines)
