"""gaspar2 against its baselines, in one run on this machine.

    python benchmarks/run.py [--quick] [--rounds 3] [--duration 4] [--warmup 1]
                             [--only SERVER/WORKLOAD ...] [--also-at REV ...]
                             [--out benchmarks/results]

Builds the C load generator, echo server and example worker (examples/workers) and the C
worker library's example (client/c-worker, when libzmq's headers are there), then runs
every (workload, server) point once per round. Within a round the servers run one after
another, one at a time, each started fresh; their order rotates from round to round.
Prints the medians over the rounds, the ratios gaspar2 is judged by, and the kernel's
listen-queue and retransmission counters around each point, and the page faults of the
servers' worker processes per request; writes OUT/results.json, OUT/results.txt,
OUT/chart.png and the servers' logs in OUT/logs/.
"""

import argparse
import fnmatch
import functools
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time

from common import (
    BUILD,
    HERE,
    ROOT,
    RemotePool,
    Server,
    build,
    build_c_worker,
    children,
    load_handler,
    page_faults,
    proc_stat,
)
from report import format_report, target_ratios
from thumbnail import photo

SERVERS = ("c-echo", "gevent-inline", "asyncio-ppe", "plain-processes", "design-card",
           "shape-floor", "gaspar2", "gaspar2-exec-c", "remote-python", "remote-c")
ECHO, SHA, SLEEP = ("gaspar2.examples:echo", "gaspar2.examples:sha256_chain",
                    "gaspar2.examples:sleep")
BACKTRACK = "gaspar2.examples:backtrack"
THUMBNAIL = "benchmarks.thumbnail:thumbnail"
NET = ("gevent-inline", "asyncio-ppe", "design-card", "gaspar2")
# The servers with forked workers.
WORKERS = ("asyncio-ppe", "plain-processes", "design-card", "shape-floor", "gaspar2",
           "gaspar2-exec-c")
FLOOR = ("shape-floor",)      # the shape's own ceiling, on the small-request points only
# gaspar2 serving through a program (serve --exec), the C example worker: 100 B echo, c=1, c=32.
EXEC = ("gaspar2-exec-c",)
# One producer whose one local worker is kept busy, and two remote workers joined to it over
# loopback TCP: `gaspar2 worker` (Python) or the C worker library's example. 100 B echo, c=32.
REMOTE = ("remote-python", "remote-c")
REMOTE_WORKERS = 2
C_WORKER = os.path.join(BUILD, "c-worker", "gaspar2-worker-echo")
KERNEL_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPTimeouts", "RetransSegs")


class Workload:
    """One kind of load: a handler, a concurrency, the load generator's payload options;
    ``message`` (ASCII) or ``message_file`` is the payload plain-processes calls with."""

    def __init__(self, name, handler, conc, servers, loadgen_args, message=None, message_file=None):
        self.name, self.handler, self.conc, self.servers = name, handler, conc, servers
        self.loadgen_args, self.message, self.message_file = loadgen_args, message, message_file


def calibrate(seconds):
    """Rounds of sha256_chain that take about ``seconds`` per call in this process."""
    chain = load_handler(SHA)

    def timed(rounds):
        began = time.perf_counter()
        chain(b"%d" % rounds)
        return time.perf_counter() - began

    rounds = 1000
    for _ in range(20):              # until one call is long enough to time well
        if timed(rounds) >= 0.02:
            break
        rounds *= 2
    per_round = statistics.median(timed(rounds) for _ in range(5)) / rounds
    return max(1, round(seconds / per_round))


def backtrack_letters(seconds):
    """Letters for ``backtrack`` to hold the GIL about ``seconds``: each one doubles the time."""
    handler = load_handler(BACKTRACK)
    began = time.perf_counter()
    handler(b"18")
    per_18 = time.perf_counter() - began
    return 18 + max(0, round(math.log2(seconds / per_18)))


def make_workloads(files):
    """The workloads, with sha256_chain calibrated now and the thumbnail's photo made once
    (in build/); ``files`` is where payloads go."""
    def write(name, data):
        path = os.path.join(files, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    echo_servers = ("c-echo", *NET)
    points = [Workload("echo-100B-c%d" % c, ECHO, c,
                       echo_servers + (FLOOR + EXEC if c < 256 else ())
                       + (REMOTE if c == 32 else ()), ["-s", "100"])
              for c in (1, 32, 256)]
    # The load generator's own ceiling: all its threads against the C server.
    threads = os.cpu_count() or 1
    points.append(Workload("echo-100B-c32-j%d" % threads, ECHO, 32, ("c-echo",),
                           ["-s", "100", "-j", str(threads)]))
    # Mid-sized requests; the 200 KiB one is about the thumbnail point's, without its work.
    points.append(Workload("echo-64KiB-c32", ECHO, 32, echo_servers, ["-s", str(64 << 10)]))
    points.append(Workload("echo-200KiB-c32", ECHO, 32, echo_servers, ["-s", str(200 << 10)]))
    points.append(Workload("echo-1MiB-c4", ECHO, 4, echo_servers, ["-s", str(1 << 20)]))
    points.append(Workload("echo-8MiB-c2", ECHO, 2, echo_servers, ["-s", str(8 << 20)]))
    calibration = {}
    chain = load_handler(SHA)
    for ms in (1, 10):
        rounds = calibrate(ms / 1000)
        message = b"%d" % rounds
        name = "sha-%dms-c32" % ms
        calibration[name] = rounds
        servers = NET + ("plain-processes",) + (FLOOR if ms == 1 else ())
        points.append(Workload(name, SHA, 32, servers,
                               ["-f", write(name + ".in", message),
                                "-e", write(name + ".out", chain(message))],
                               message=message.decode()))
    # A real library on mid-sized requests: a JPEG of about 200 KB in, its thumbnail out.
    jpeg = photo(os.path.join(BUILD, "photo-200KB.jpg"))
    with open(jpeg, "rb") as f:
        thumb = load_handler(THUMBNAIL)(f.read())
    points.append(Workload("thumb-200KB-c32", THUMBNAIL, 32,
                           ("asyncio-ppe", "plain-processes", "gaspar2"),
                           ["-f", jpeg, "-e", write("thumb-200KB-c32.out", thumb)],
                           message_file=jpeg))
    quick, slow = write("quick.in", b"0"), write("slow.in", b"0.2")
    points.append(Workload("quick-c32", SLEEP, 32, NET, ["-f", quick]))
    points.append(Workload("mixed-c32", SLEEP, 32, NET, ["-f", quick, "-S", slow, "-k", "100"]))
    # The same mix, the slow job one C call that holds the GIL for about 200 ms.
    letters = backtrack_letters(0.2)
    calibration["gil-mixed-c32"] = letters
    gil = write("gil.in", b"%d" % letters)
    points.append(Workload("gil-mixed-c32", BACKTRACK, 32, NET,
                           ["-f", quick, "-S", gil, "-k", "100"], message=str(letters)))
    return points, calibration


def selected(patterns, server, workload):
    """--only: SERVER/WORKLOAD glob patterns; a pattern without '/' matches either."""
    if not patterns:
        return True
    for p in patterns:
        s, _, w = p.partition("/") if "/" in p else (p, "", None)
        if w is None and (fnmatch.fnmatch(server, s) or fnmatch.fnmatch(workload, s)):
            return True
        if w is not None and fnmatch.fnmatch(server, s) and fnmatch.fnmatch(workload, w):
            return True
    return False


def server_command(server, handler, workers):
    py = sys.executable
    return {
        "c-echo": [os.path.join(BUILD, "c_echo_server"), "--port", "0"],
        "gevent-inline": [py, os.path.join(HERE, "gevent_inline.py"), handler, "--port", "0"],
        "asyncio-ppe": [py, os.path.join(HERE, "asyncio_ppe.py"), handler, "--port", "0",
                        "--workers", str(workers)],
        "design-card": [py, os.path.join(HERE, "design_card.py"), handler, "--port", "0",
                        "--workers", str(workers)],
        "shape-floor": [py, os.path.join(HERE, "shape_floor.py"), handler, "--port", "0",
                        "--workers", str(workers)],
        "gaspar2": [py, "-m", "gaspar2", "serve", handler, "--port", "0",
                    "--workers", str(workers)],
        # The same echo, by the C example worker: the handler names the workload, not the code.
        "gaspar2-exec-c": [py, "-m", "gaspar2", "serve",
                           "--exec", shlex.quote(os.path.join(BUILD, "echo-worker")),
                           "--port", "0", "--workers", str(workers)],
    }[server.split("@")[0]]


def remote_commands(server, handler):
    """A remote server's producer, and a function from its endpoint to one remote worker's
    command. The producer's one local worker runs the conformance kit's handler (an echo that
    can also be told to hold on), which keeps it busy for the whole point (see RemotePool);
    the handler named is the Python remote workers', the C ones echo."""
    producer = [sys.executable, "-m", "gaspar2", "serve", "gaspar2.conformance:handle",
                "--port", "0", "--workers", "1", "--window", "1",
                "--remote-workers", "tcp://127.0.0.1:0", "--graceful-timeout", "1"]
    if server == "remote-c":
        return producer, lambda endpoint: [C_WORKER, endpoint]
    return producer, lambda endpoint: [sys.executable, "-m", "gaspar2", "worker", handler,
                                       "--connect", endpoint, "--listen", "127.0.0.1",
                                       "--workers", "1"]


def export_revision(rev):
    """gaspar2's package as of git revision ``rev``, in a directory of its own; that
    directory, where ``python -m gaspar2`` finds that package first."""
    out = os.path.join(BUILD, "at-" + rev.replace("/", "_"))
    if not os.path.isdir(os.path.join(out, "gaspar2")):
        os.makedirs(out, exist_ok=True)
        archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "gaspar2"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out


def add_revisions(points, revisions):
    """Servers ``gaspar2@REV`` beside gaspar2 (and ``gaspar2-exec-c@REV`` beside
    gaspar2-exec-c), for the workloads whose handler REV has (a handler outside
    gaspar2.examples, such as the thumbnail one, any REV has)."""
    extra = []
    for rev in revisions:
        where = export_revision(rev)
        with open(os.path.join(where, "gaspar2", "examples.py")) as f:
            examples = f.read()
        for server in ("gaspar2", *EXEC):
            name = "%s@%s" % (server, rev)
            extra.append((name, where))
            for w in points:
                module, _, attr = w.handler.partition(":")
                if server in w.servers and (module != "gaspar2.examples"
                                            or "def %s(" % attr in examples):
                    w.servers = (*w.servers, name)
    return dict(extra)


def kernel_counters():
    """The TcpExt (/proc/net/netstat) and Tcp (/proc/net/snmp) counters that betray trouble."""
    found = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            for name, value in zip(names.split()[1:], values.split()[1:], strict=False):
                if name in KERNEL_COUNTERS:
                    found[name] = int(value)
    return found


def worker_pids(server, pid):
    """The worker processes of ``server`` (process ``pid``): gaspar2's are the children of the
    preloaders its fork server (the producer's only child) forks, one per generation (with
    --exec, not their programs); asyncio-ppe's pool processes and the other baselines'
    workers are the server's own children."""
    if server.split("@")[0] in ("gaspar2", *EXEC):
        return [worker for child in children(pid) for preloader in children(child)
                for worker in children(preloader)]
    return children(pid)


def faults_of(pids):
    """{pid: page faults so far} of those of ``pids`` still there."""
    found = {pid: page_faults(pid) for pid in pids}
    return {pid: n for pid, n in found.items() if n is not None}


def add_faults(result, faults, workers):
    """The workers' page faults over the measured window, and per verified request."""
    result["worker_faults"] = {"workers": workers, "faults": faults}
    result["faults_per_req"] = faults / result["requests"] if result["requests"] else None


def cpu_ticks(pid):
    """A process's user + system time so far, in clock ticks (fields 14 and 15), or None."""
    fields = proc_stat(pid)
    return None if fields is None else int(fields[14 - 3]) + int(fields[15 - 3])


def run_loadgen(workload, port, args, workers=None, pid=None):
    """One point of the load generator. ``workers()``, if given, lists the server's worker
    processes: their page faults are read as the measured window begins (marked by the
    load generator on its stderr) and as it ends, and the difference goes in the result.
    ``pid``, the server's own process (gaspar2's producer), has its CPU time read at the
    same edges: ``cpu_us_per_req`` is its user + system time per verified request."""
    cmd = [os.path.join(BUILD, "loadgen"), "-p", str(port), "-c", str(workload.conc),
           "-d", str(args.duration), "-w", str(args.warmup), "-t", "10", "-m",
           *workload.loadgen_args]
    limit = args.warmup + args.duration + 60
    before, first, last, expired, stderr = kernel_counters(), None, None, [], []
    ticks = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        watchdog = threading.Timer(limit, lambda: (expired.append(limit), proc.kill()))
        watchdog.start()
        try:
            for line in proc.stderr:
                if line.strip() in ("window begins", "window ends") and pid is not None:
                    ticks.append(cpu_ticks(pid))
                if line.strip() == "window begins" and workers:
                    first = faults_of(workers())
                elif line.strip() == "window ends" and first is not None:
                    last = faults_of(first)             # the known ones first, at once
                    last.update(faults_of(set(workers()) - set(first)))    # any started since
                elif not line.startswith("window "):
                    stderr.append(line)
            out = proc.stdout.read()
            proc.wait()
        finally:
            watchdog.cancel()
    if expired:
        raise subprocess.TimeoutExpired(cmd, limit)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, "".join(stderr))
    after = kernel_counters()
    result = json.loads(out)
    result["kernel"] = {k: after[k] - before.get(k, 0) for k in after}
    if last is not None:
        add_faults(result, sum(n - first.get(p, 0) for p, n in last.items()), len(last))
    if len(ticks) == 2 and None not in ticks and result["requests"]:
        seconds = (ticks[1] - ticks[0]) / os.sysconf("SC_CLK_TCK")
        result["cpu_us_per_req"] = 1e6 * seconds / result["requests"]
    return result


def run_plain(workload, args):
    payload = (["--message-file", workload.message_file] if workload.message_file
               else ["--message", workload.message])
    cmd = [sys.executable, os.path.join(HERE, "plain_processes.py"), workload.handler, *payload,
           "--workers", str(args.workers), "--duration", str(args.duration),
           "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=args.warmup + args.duration + 120).stdout
    result = json.loads(out)
    add_faults(result, result.pop("faults"), result["workers"])
    return result


def measure(server, workload, port, args, pid=None):
    """One point; a failure becomes an {"error": ...} result, so the run goes on."""
    try:
        if server == "plain-processes":
            return run_plain(workload, args)
        workers = (functools.partial(worker_pids, server, pid)
                   if server.split("@")[0] in WORKERS else None)
        return run_loadgen(workload, port, args, workers, pid)
    except subprocess.CalledProcessError as exc:
        return {"error": "exit %s: %s" % (exc.returncode, (exc.stderr or "").strip()[-300:])}
    except (subprocess.TimeoutExpired, ValueError) as exc:
        return {"error": str(exc)[:300]}


def run_server(server, handler, points, round_no, args, raw):
    """Start one server, run its points of this round, stop it."""
    if server == "plain-processes":
        for w in points:
            raw[w.name, server].append(measure(server, w, None, args))
            progress(round_no, args, server, w, raw[w.name, server][-1])
        return
    log = os.path.join(args.out, "logs",
                       "%s-%s-r%d.log" % (server, handler.split(":")[1], round_no + 1))
    try:
        if server in REMOTE:
            producer, worker = remote_commands(server, handler)
            proc = RemotePool(producer, log, worker, REMOTE_WORKERS)
        else:
            proc = Server(server_command(server, handler, args.workers), log,
                          cwd=args.revisions.get(server, ROOT))
    except (RuntimeError, OSError) as exc:
        for w in points:
            raw[w.name, server].append({"error": str(exc)})
            progress(round_no, args, server, w, raw[w.name, server][-1])
        return
    with proc:
        for w in points:
            alive = proc.proc.poll() is None
            result = measure(server, w, proc.port, args, proc.proc.pid) if alive else {
                "error": "server exited; see %s" % log}
            raw[w.name, server].append(result)
            progress(round_no, args, server, w, result)


def progress(round_no, args, server, workload, result):
    if "error" in result:
        text = "FAILED: %s" % result["error"]
    else:
        text = "%.0f req/s" % result["rps"]
        if "latency" in result:
            errors = sum(result["errors"].values())
            text += ", p99 %.2f ms, %d errors" % (result["latency"]["p99_ms"], errors)
        if result.get("faults_per_req") is not None:
            text += ", %.2f worker faults/req" % result["faults_per_req"]
    print("[round %d/%d] %-15s %-15s %s" % (round_no + 1, args.rounds, server, workload.name, text),
          file=sys.stderr, flush=True)


def run_rounds(points, args):
    """Every server once per round; one server at a time; the order rotates each round."""
    raw = {(w.name, s): [] for w in points for s in w.servers if selected(args.only, s, w.name)}
    handlers = list(dict.fromkeys(w.handler for w in points))
    for round_no in range(args.rounds):
        for handler in handlers:
            group = [w for w in points if w.handler == handler]
            servers = [s for s in SERVERS + tuple(args.revisions)
                       if any((w.name, s) in raw for w in group)]
            shift = round_no % len(servers) if servers else 0
            for server in servers[shift:] + servers[:shift]:
                mine = [w for w in group if (w.name, server) in raw]
                run_server(server, handler, mine, round_no, args, raw)
    return raw


def summarize(runs):
    """Medians over the rounds that succeeded; error and kernel counts summed over all.
    ``per_round`` keeps each round's req/s (None where it failed), for the ratios judged
    round by round."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "not run"}

    def med(get):
        return statistics.median(get(r) for r in ok)

    row = {"rounds_ok": len(ok), "rounds": len(runs), "rps": med(lambda r: r["rps"]),
           "per_round": {"rps": [r.get("rps") for r in runs]}}
    faults = [r["faults_per_req"] for r in ok if r.get("faults_per_req") is not None]
    if faults:
        row["faults_per_req"] = statistics.median(faults)
    cpu = [r["cpu_us_per_req"] for r in ok if r.get("cpu_us_per_req") is not None]
    if cpu:
        row["cpu_us_per_req"] = statistics.median(cpu)
    if "latency" not in ok[0]:
        return row
    row.update({k: med(lambda r, k=k: r["latency"][k])
                for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")})
    row["mb_per_s"] = med(lambda r: r["mb_per_s"])
    row["loadgen_cpu"] = med(lambda r: r["loadgen_cpu"])
    row["error_kinds"] = {k: sum(r["errors"][k] for r in ok) for k in ok[0]["errors"]}
    row["errors"] = sum(row["error_kinds"].values())
    row["kernel"] = {k: sum(r["kernel"].get(k, 0) for r in ok) for k in KERNEL_COUNTERS}
    if "slow_latency" in ok[0]:
        row["slow_p50_ms"] = med(lambda r: r["slow_latency"]["p50_ms"])
        row["slow_p99_ms"] = med(lambda r: r["slow_latency"]["p99_ms"])
        row["slow_count"] = sum(r["slow_latency"]["count"] for r in ok)
    return row


def machine():
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
            "somaxconn": read("/proc/sys/net/core/somaxconn"), "commit": commit or None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0,
                        help="seconds measured per point (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before measuring (default 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="W (default: CPUs)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round of 1 s points; its ratios are not judged")
    parser.add_argument("--only", action="append", default=[], metavar="SERVER/WORKLOAD",
                        help="glob patterns, e.g. 'gaspar2/*', '*/echo-*', 'gevent-inline' "
                             "(repeatable)")
    parser.add_argument("--also-at", action="append", default=[], metavar="REV",
                        help="also run gaspar2 as of this git revision, as servers gaspar2@REV "
                             "and gaspar2-exec-c@REV, beside the current code: an A/B on the "
                             "same machine (repeatable)")
    parser.add_argument("--list", action="store_true",
                        help="list the workloads and servers, then exit")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 0.5
    args.out = os.path.abspath(args.out)
    return args


def count_calls(args):
    """Python calls per request, producer and worker, from calls.py (a run of its own
    before the rounds); None if gaspar2 is not among the servers run."""
    if args.only and not any(fnmatch.fnmatch("gaspar2", p.split("/")[0]) for p in args.only):
        return None
    done = subprocess.run([sys.executable, os.path.join(HERE, "calls.py")], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    if done.returncode:
        print("calls.py failed: %s" % done.stderr.strip()[-300:], file=sys.stderr)
        return None
    return json.loads(done.stdout.splitlines()[0])


def save(args, results, text):
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "results.txt"), "w") as f:
        f.write(text + "\n")
    try:
        from chart import draw
        draw(results, os.path.join(args.out, "chart.png"))
    except ImportError as exc:
        print("no chart (%s): pip install matplotlib" % exc, file=sys.stderr)


def main():
    args = parse_args()
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    build()
    os.makedirs(os.path.join(BUILD, "payloads"), exist_ok=True)
    points, calibration = make_workloads(os.path.join(BUILD, "payloads"))
    if any(selected(args.only, "remote-c", w.name) for w in points if "remote-c" in w.servers):
        c_worker, why = build_c_worker()
        if c_worker is None:
            print("remote-c skipped: %s" % why, file=sys.stderr)
            for w in points:
                w.servers = tuple(s for s in w.servers if s != "remote-c")
    args.revisions = add_revisions(points, args.also_at)
    if args.list:
        for w in points:
            print("%-15s %s" % (w.name, " ".join(w.servers)))
        return 0
    began = time.monotonic()
    calls = count_calls(args)
    raw = run_rounds(points, args)
    table = {key: summarize(runs) for key, runs in raw.items()}
    ratios = target_ratios(table, calls, judge=not args.quick)
    results = {
        "machine": machine(), "elapsed_s": round(time.monotonic() - began, 1),
        "settings": {k: getattr(args, k) for k in ("quick", "rounds", "duration", "warmup",
                                                   "workers", "only", "also_at")},
        "calibration": {name: {"rounds": r} for name, r in calibration.items()},
        "workloads": [{"name": w.name, "handler": w.handler, "concurrency": w.conc}
                      for w in points],
        "points": [dict(workload=w, server=s, **row) for (w, s), row in table.items()],
        "calls_per_request": calls,
        "ratios": ratios,
        "runs": [{"workload": w, "server": s, "results": runs} for (w, s), runs in raw.items()],
    }
    text = format_report(results)
    print(text)
    save(args, results, text)
    print("results in %s (%.0f s)" % (args.out, results["elapsed_s"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
