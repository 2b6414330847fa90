"""Draw a run's results as a PNG: throughput relative to each workload's reference (linear,
where the goals are judged), then throughput and p99 latency (log, the absolute figures).

    python benchmarks/chart.py benchmarks/results/results.json [-o chart.png]
"""

import argparse
import json
import os

from report import RATIOS, SERVER_ORDER

# Okabe-Ito: told apart with any colour vision; gaspar2 alone in vermillion, hatched and edged.
COLOURS = {"c-echo": "#000000", "gevent-inline": "#56B4E9", "asyncio-ppe": "#E69F00",
           "plain-processes": "#009E73", "design-card": "#CC79A7", "shape-floor": "#0072B2",
           "gaspar2": "#D55E00"}
REVISION_COLOUR = "#F0E442"    # gaspar2@REV: the code it is compared with
MISSING = "#7f7f7f"
# What a workload's throughput is divided by: the design's own ceiling where it ran, else the
# machine's ceiling for the CPU work, else one gevent process, else the C server.
REFERENCES = ("shape-floor", "plain-processes", "gevent-inline", "c-echo", "asyncio-ppe",
              "design-card")
RATIO_TOP = 2.0                # a linear axis up to it keeps a 5% gap visible; taller bars are cut


def chart_order(servers):
    """gaspar2 first, then its earlier revisions, gaspar2 serving through a program, then the
    baselines in the report's order."""
    def rank(server):
        if server == "gaspar2":
            return (0, "")
        if server.startswith("gaspar2@"):
            return (1, server)
        if server == "gaspar2-exec-c":
            return (1, "~")
        if server in SERVER_ORDER:
            return (2, "%02d" % SERVER_ORDER.index(server))
        return (3, server)
    return sorted(servers, key=rank)


def style(server):
    """Bar colours and marks: gaspar2's stand out from every baseline's."""
    if server == "gaspar2":
        return {"facecolor": COLOURS["gaspar2"], "edgecolor": "black", "linewidth": 1.4,
                "hatch": "//"}
    if server.startswith("gaspar2@"):
        return {"facecolor": REVISION_COLOUR, "edgecolor": "black", "linewidth": 1.0,
                "hatch": ".."}
    if server == "gaspar2-exec-c":     # gaspar2 too, its handler a C program (serve --exec)
        return {"facecolor": "white", "edgecolor": COLOURS["gaspar2"], "linewidth": 1.4,
                "hatch": "//"}
    return {"facecolor": COLOURS.get(server, MISSING), "edgecolor": "white", "linewidth": 0.5}


def layout(results, key, workloads=None):
    """Per workload, the servers that ran it with a figure for ``key`` or failed: a server
    that does not run a workload (or has no such figure, as plain-processes' latency) takes
    no slot, so an empty slot never stands for a missing figure."""
    points = {(p["workload"], p["server"]): p for p in results["points"]}
    names = workloads or [w["name"] for w in results["workloads"]]
    groups = []
    for w in names:
        here = [s for (pw, s), p in points.items()
                if pw == w and ("error" in p or p.get(key) is not None)]
        groups.append((w, chart_order(here)))
    return points, groups


def mark_missing(ax, x, width, server):
    """A hatched stub and "n/a" where a server ran a workload but has no figure."""
    from matplotlib.patches import Rectangle

    edge = COLOURS.get(server, MISSING)
    ax.add_patch(Rectangle((x - width / 2, 0), width, 0.18, transform=ax.get_xaxis_transform(),
                           fill=False, hatch="xxx", edgecolor=edge, linewidth=0.8))
    ax.text(x, 0.2, "n/a", transform=ax.get_xaxis_transform(), rotation=90, ha="center",
            va="bottom", fontsize=8, color="black")


def draw_groups(ax, points, groups, value_of):
    """Bars of equal width, each group centred on its workload; returns the bar width and
    each bar drawn as (workload, server, x, value)."""
    width = 0.84 / max([1, *(len(servers) for _, servers in groups)])
    drawn = []
    for n, (workload, servers) in enumerate(groups):
        for i, server in enumerate(servers):
            x = n + (i - (len(servers) - 1) / 2) * width
            value = value_of(workload, server, points.get((workload, server)))
            if value is None:
                mark_missing(ax, x, width, server)
                continue
            ax.bar([x], [value], width, zorder=2, **style(server))
            drawn.append((workload, server, x, value))
    ax.set_xticks(range(len(groups)))
    ax.set_xlim(-0.5, len(groups) - 0.5)
    return width, drawn


def figure(point, key):
    if point is None or "error" in point:
        return None
    return point.get(key)


def reference(points, workload):
    """The server a workload's throughput is divided by, or None if none of them has a figure."""
    for server in REFERENCES:
        if figure(points.get((workload, server)), "rps"):
            return server
    return None


def goal_height(points, workload, ref):
    """The throughput gaspar2 must reach at a workload, as a multiple of the reference: the
    strictest of report.py's throughput goals with gaspar2 as numerator there."""
    base = figure(points.get((workload, ref)), "rps")
    heights = []
    for _, top, bottom, better, goal in RATIOS:
        if (goal is None or better != "higher" or top[:2] != (workload, "gaspar2")
                or bottom[0] != workload or top[2] not in ("rps", "mb_per_s")):
            continue
        other = figure(points.get((workload, bottom[1])), "rps")
        if other and base:
            heights.append(goal * other / base)
    return max(heights) if heights else None


def ratio_panel(ax, results, quick):
    """Each server's req/s over the reference's, linear: the view the goals are judged in."""
    from matplotlib import patheffects

    points, groups = layout(results, "rps")
    groups = [(w, servers) for w, servers in groups if len(servers) > 1]
    refs = {w: reference(points, w) for w, _ in groups}

    def value_of(workload, server, point):
        ref = refs[workload]
        value = figure(point, "rps")
        if value is None or ref is None:
            return None
        return value / figure(points[workload, ref], "rps")

    width, drawn = draw_groups(ax, points, groups, value_of)
    goals = {w: goal_height(points, w, refs[w]) for w, _ in groups if refs[w]}
    outline = [patheffects.withStroke(linewidth=4, foreground="white")]
    for workload, server, x, value in drawn:
        mine = server == "gaspar2"
        goal = goals.get(workload) if mine else None
        if goal is not None:
            ax.hlines(min(goal, RATIO_TOP), x - 0.8 * width, x + 0.8 * width, colors="black",
                      linewidth=2.5, zorder=5, path_effects=outline)
        font = {"fontsize": 8 if mine else 7, "color": COLOURS["gaspar2"] if mine else "black",
                "fontweight": "bold" if mine else "normal", "rotation": 90, "ha": "center",
                "zorder": 6}
        if value > RATIO_TOP:
            ax.text(x, RATIO_TOP - 0.04, "%.1f\u00d7" % value, va="top",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5}, **font)
        elif mine:
            top = max(value, goal or 0)
            if top + 0.3 > RATIO_TOP:
                ax.text(x, value - 0.04, "%.2f" % value, va="top",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5}, **font)
            else:
                ax.text(x, top + 0.04, "%.2f" % value, va="bottom", **font)
    ax.axhline(1.0, color="black", linewidth=0.8, zorder=1)
    ax.set_ylim(0, RATIO_TOP)
    ax.set_yticks([i / 4 for i in range(int(RATIO_TOP * 4) + 1)])
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_xticklabels(["%s\n\u00f7 %s" % (w, refs[w] or "n/a") for w, _ in groups], fontsize=8)
    ax.set_ylabel("req/s \u00f7 reference's\n(linear; higher is better)")
    ax.set_title("throughput relative to each workload's reference (named under it, at 1.0); "
                 "black dash: the least gaspar2 must reach by its goals in report.py%s; "
                 "bars above %g are cut, their value written"
                 % (" (not judged: smoke run)" if quick else "", RATIO_TOP),
                 fontsize=9, loc="left")


def log_panel(ax, results, key, ylabel):
    """The absolute figures of every server, log scale: they span four orders of magnitude."""
    points, groups = layout(results, key)

    def value_of(workload, server, point):
        return figure(point, key)

    draw_groups(ax, points, groups, value_of)
    ax.set_yscale("log")
    ax.set_xticklabels([w for w, _ in groups], fontsize=8, rotation=15, ha="right")
    ax.grid(axis="y", which="both", alpha=0.3, zorder=0)
    ax.set_ylabel(ylabel)


def legend_handles(results):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    servers = chart_order({p["server"] for p in results["points"]})
    handles = [Patch(label=s, **style(s)) for s in servers]
    handles.append(Line2D([], [], color="black", linewidth=2.5, label="gaspar2's goal"))
    handles.append(Patch(fill=False, hatch="xxx", edgecolor=MISSING,
                         label="n/a: failed or no figure"))
    return handles


def draw(results, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, s = results["machine"], results["settings"]
    quick = bool(s.get("quick"))
    fig, (ratio, rps, p99) = plt.subplots(3, 1, figsize=(16, 13.5), layout="constrained",
                                          gridspec_kw={"height_ratios": [1.25, 1, 1]})
    ratio_panel(ratio, results, quick)
    log_panel(rps, results, "rps", "req/s (plain-processes: calls/s)\n(log; higher is better)")
    log_panel(p99, results, "p99_ms", "p99 latency, ms\n(log; lower is better)")
    title = ("gaspar2 and its baselines: %d CPUs, W=%d, medians of %d round(s) of %g s points, "
             "commit %s, %s" % (m["cpus"], s["workers"], s["rounds"], s["duration"],
                                m.get("commit"), m["date"]))
    if quick:
        fig.suptitle("SMOKE RUN (--quick): 1-second points are noise; no goal is judged\n" + title,
                     color="#B00000", fontweight="bold")
        for ax in (ratio, rps, p99):
            ax.text(0.5, 0.5, "SMOKE RUN", transform=ax.transAxes, fontsize=70, color="#B00000",
                    alpha=0.12, rotation=12, ha="center", va="center", fontweight="bold",
                    zorder=0)
    else:
        fig.suptitle(title)
    ratio.legend(handles=legend_handles(results), loc="lower center", ncol=10, fontsize=9,
                 frameon=False, bbox_to_anchor=(0.5, 1.06))
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
