"""Draw a run's results as a PNG: throughput and p99 latency per server and workload.

    python benchmarks/chart.py benchmarks/results/results.json [-o chart.png]
"""

import argparse
import json
import os

from report import SERVER_ORDER

COLOURS = {"c-echo": "#8c8c8c", "gevent-inline": "#4c72b0", "asyncio-ppe": "#dd8452",
           "plain-processes": "#8172b3", "design-card": "#c44e52", "shape-floor": "#937860",
           "gaspar2": "#55a868"}


def bars(ax, results, key):
    """One group of bars per workload, one bar per server that has the key."""
    rows = {(p["workload"], p["server"]): p for p in results["points"] if key in p}
    workloads = [w["name"] for w in results["workloads"]]
    servers = [s for s in SERVER_ORDER if any((w, s) in rows for w in workloads)]
    width = 0.8 / max(1, len(servers))
    for i, server in enumerate(servers):
        xs = [n + (i - (len(servers) - 1) / 2) * width for n, w in enumerate(workloads)
              if (w, server) in rows]
        ys = [rows[w, server][key] for w in workloads if (w, server) in rows]
        ax.bar(xs, ys, width, label=server, color=COLOURS.get(server))
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=20, ha="right")
    ax.grid(axis="y", which="both", alpha=0.3)


def draw(results, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 8))
    bars(top, results, "rps")
    top.set_ylabel("requests/s (calls/s), log")
    top.legend(ncol=6, fontsize="small")
    bars(bottom, results, "p99_ms")
    bottom.set_ylabel("p99 latency, ms, log")
    m, s = results["machine"], results["settings"]
    fig.suptitle("gaspar2 and its baselines: %d CPUs, W=%d, medians of %d round(s), %s"
                 % (m["cpus"], s["workers"], s["rounds"], m["date"]))
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", help="a results.json written by run.py")
    parser.add_argument("-o", "--output", help="default: chart.png beside the results")
    args = parser.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.results)), "chart.png")
    draw(results, out)
    print(out)


if __name__ == "__main__":
    main()
