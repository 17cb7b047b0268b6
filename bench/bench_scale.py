"""C-FIND latency against item count: the bridge's SCP, wlmscpfs and Orthanc 1.10.1.

    python bench/bench_scale.py [--sizes 1000,10000,100000] [--workdir DIR]

For each size, the same generated `.wl` files (tests/wlgen.py, 100 days, 20 stations) are
served by wlmscpfs and by Orthanc's ModalityWorklists plugin from the folder, and by the
bridge from its store (`import-wl`). Every server gets the same three queries from DCMTK
findscu, a process per query as a modality's client would be, TCP_NODELAY=1 everywhere:
selective (one accession), typical (one station AE and one day), broad (one day: 1% of the
items). Also measured: the bridge's start-up time (process start to listening, the index
loaded) and its resident memory after the queries.

Prints a table, draws bench/cfind_scale.png (latency against items, per server and query)
and writes both to bench/results.md under "C-FIND at scale" and "Memory and start-up".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT), str(ROOT / "tests")]

import wlgen  # noqa: E402
from bench_cfind import DAYS, WLM_AE, findscu, prepare, queries, servers  # noqa: E402
from bench_cfind import findscu_keys as keys_for  # noqa: E402
from bench_ingest import write_section  # noqa: E402

from peers import run_orthanc  # noqa: E402

SERVERS = ("bridge", "wlmscpfs", "Orthanc")


def query_set(items: int) -> list[tuple[str, dict, dict, object]]:
    """bench_cfind's first three shapes: one accession, one station and day, one day."""
    labels = ("selective", "typical", "broad")
    return [(label, top, step, predicate)
            for label, (_, top, step, predicate) in zip(labels, queries(items), strict=False)]


def median_time(port: int, called: str, keys: list[str], expected: int, repeat: int) -> float:
    assert findscu(port, called, keys) == expected, f"{called}: wrong number of answers"
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        assert findscu(port, called, keys) == expected
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(workdir: Path, items: int) -> dict:
    folder, data = prepare(workdir, items)
    specs = [wlgen.spec(i, DAYS) for i in range(items)]
    result: dict = {"items": items, "times": {}}
    with servers(workdir, folder, data) as running, \
            run_orthanc(workdir / "orthanc", folder, aet="ORTHANC") as orthanc_port:
        result["startup_s"] = running.startup_s
        ports = {"bridge": (running.scp_port, "BRIDGE_MWL"),
                 "wlmscpfs": (running.wlm_port, WLM_AE), "Orthanc": (orthanc_port, "ORTHANC")}
        for name, top, step, predicate in query_set(items):
            expected = sum(1 for s in specs if predicate(s))
            keys = keys_for(top, step)
            for server, (port, called) in ports.items():
                repeat = 5 if server == "bridge" or items <= 10_000 else 3
                seconds = median_time(port, called, keys, expected, repeat)
                result["times"][(name, server)] = seconds
                print(f"{items:>7} items  {name:9s} ({expected:>4} answers)  {server:8s} "
                      f"{seconds * 1000:9.1f} ms", flush=True)
        result["rss_mb"] = rss_mb(running.bridge.pid)
    return result


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    sizes = [r["items"] for r in results]
    for ax, (name, *_rest) in zip(axes, query_set(1000), strict=True):
        for server, marker in zip(SERVERS, "os^", strict=True):
            ax.plot(sizes, [r["times"][(name, server)] * 1000 for r in results],
                    marker=marker, label=server)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} query")
        ax.set_xlabel("worklist items")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("C-FIND latency, findscu, ms (log)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--workdir", type=Path, help="keep generated files between runs")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results = []
    for items in sizes:
        workdir = base / str(items)
        workdir.mkdir(parents=True, exist_ok=True)
        results.append(measure(workdir, items))

    lines = ["| items | query | bridge ms | wlmscpfs ms | Orthanc ms | bridge / wlmscpfs | "
             "bridge / Orthanc |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, *_rest in query_set(r["items"]):
            b, w, o = (r["times"][(name, s)] * 1000 for s in SERVERS)
            lines.append(f"| {r['items']:,} | {name} | {b:.1f} | {w:.1f} | {o:.1f} | "
                         f"{b / w:.3f} | {b / o:.3f} |")
    table = "\n".join(lines)
    png = args.results.parent / "cfind_scale.png"  # beside the results that link it
    chart(results, png)
    memory = ["| items | bridge start-up s | bridge RSS MB |", "|---|---|---|"]
    memory += [f"| {r['items']:,} | {r['startup_s']:.1f} | {r['rss_mb']:.0f} |" for r in results]
    largest = results[-1]
    verdict = (f"At {largest['items']:,} items: start-up {largest['startup_s']:.1f} s "
               f"(target < 15 s: {'met' if largest['startup_s'] < 15 else 'MISSED'}), RSS "
               f"{largest['rss_mb']:.0f} MB (target < 500 MB: "
               f"{'met' if largest['rss_mb'] < 500 else 'MISSED'}).")
    print(table, "\n", "\n".join(memory), "\n", verdict, sep="\n")
    when = f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    write_section(args.results, "C-FIND at scale", (
        f"`python bench/bench_scale.py --sizes {args.sizes}` on {when}. DCMTK findscu, a "
        "process per query (its start-up, about 10 ms, is in every figure), TCP_NODELAY=1 on "
        "every side; the same generated items in each server. Selective: one accession; "
        "typical: one station AE and one day; broad: one day (1% of the items).\n\n"
        f"{table}\n\n![C-FIND latency against worklist items](cfind_scale.png)"))
    write_section(args.results, "Memory and start-up", (
        f"The bridge with its SCP on, loading its index from the store at start-up ({when}); "
        "start-up is process start to listening, RSS is read after the queries above.\n\n"
        + "\n".join(memory) + "\n\n" + verdict))


if __name__ == "__main__":
    main()
