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
and writes both to bench/results.md under "C-FIND at scale" (with the start-up and RSS;
bench/bench_memory.py writes "Memory and start-up").
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
from bench_cfind import (  # noqa: E402
    DAYS,
    SPS_DATE,
    WLM_AE,
    at_once,
    findscu,
    prepare,
    queries,
    servers,
)
from bench_cfind import findscu_keys as keys_for  # noqa: E402
from bench_ingest import write_section  # noqa: E402

from peers import run_orthanc  # noqa: E402

SERVERS = ("bridge", "wlmscpfs", "Orthanc")


MODALITY = "Modality"
# 32 of the 100 generated days: with one modality of four, 8 % of the items (8,000 of
# 100,000), what a modality asking for all its items gets.
MONTH = ("20240101", "20240201")


def query_set(items: int) -> list[tuple[str, dict, dict, object]]:
    """bench_cfind's first three shapes (one accession, one station and day, one day), a
    modality's month, and name and patient ID prefixes."""
    labels = ("selective", "typical", "broad")
    out = [(label, top, step, predicate)
           for label, (_, top, step, predicate) in zip(labels, queries(items), strict=False)]
    out.append(modality_query("CT"))
    name = f"SMITH^G{items * 1234 // 100_000 // 10:06d}*"
    out.append(("name prefix", {"PatientName": name}, {},
                lambda s, n=name[:-1]: s["PatientName"].startswith(n)))
    patient = f"P{items * 1234 // 100_000 // 100:05d}*"
    out.append(("ID prefix", {"PatientID": patient}, {},
                lambda s, p=patient[:-1]: s["PatientID"].startswith(p)))
    return out


def modality_query(modality: str) -> tuple[str, dict, dict, object]:
    low, high = MONTH
    return (f"modality month ({modality})", {},
            {MODALITY: modality, SPS_DATE: f"{low}-{high}"},
            lambda s: s[MODALITY] == modality and low <= s[SPS_DATE] <= high)


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def together(port: int, called: str, key_lists: list[list[str]]) -> tuple[float, int]:
    """Wall time until every findscu started at once has its answers; total answers."""
    start = time.perf_counter()
    count = at_once([["/usr/bin/findscu", "-W", "-v", "-sr", "-aet", f"MOD{n}", "-aec", called,
                      *keys, "127.0.0.1", str(port)] for n, keys in enumerate(key_lists)])
    return time.perf_counter() - start, count


def median_time(port: int, called: str, keys: list[str], expected: int | None,
                repeat: int) -> float:
    """Median of `repeat` runs after a warm-up; `expected` None: the count is not checked
    (a query the server does not support)."""
    count = findscu(port, called, keys)
    assert expected is None or count == expected, f"{called}: {count} answers, not {expected}"
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        assert findscu(port, called, keys) == count
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# What a peer does not match as the standard says: its time is not comparable.
UNSUPPORTED = {("ID prefix", "wlmscpfs"): "wlmscpfs matches PatientID only exactly (0 answers)"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(workdir: Path, items: int) -> dict:
    folder, data = prepare(workdir, items)
    specs = [wlgen.spec(i, DAYS) for i in range(items)]
    result: dict = {"items": items, "times": {}, "answers": {}, "concurrent": {}}
    with servers(workdir, folder, data) as running, \
            run_orthanc(workdir / "orthanc", folder, aet="ORTHANC") as orthanc_port:
        result["startup_s"] = running.startup_s
        pid = running.bridge.pid
        ports = {"bridge": (running.scp_port, "BRIDGE_MWL"),
                 "wlmscpfs": (running.wlm_port, WLM_AE), "Orthanc": (orthanc_port, "ORTHANC")}
        for name, top, step, predicate in query_set(items):
            expected = sum(1 for s in specs if predicate(s))
            result["answers"][name] = expected
            keys = keys_for(top, step)
            for server, (port, called) in ports.items():
                repeat = 5 if server == "bridge" or items <= 10_000 else 3
                cpu = cpu_seconds(pid)
                seconds = median_time(port, called, keys,
                                      None if (name, server) in UNSUPPORTED else expected,
                                      repeat)
                if server == "bridge" and expected >= 1000:
                    # The bridge process's CPU over the warm-up and the timed runs.
                    result.setdefault("cpu_per_answer_ms", {})[name] = \
                        (cpu_seconds(pid) - cpu) / (expected * (repeat + 1)) * 1000
                result["times"][(name, server)] = seconds
                print(f"{items:>7} items  {name:22s} ({expected:>5} answers)  {server:8s} "
                      f"{seconds * 1000:9.1f} ms", flush=True)
        # Four modalities, each asking for its month at the same moment, against the same
        # four one after another.
        four = [modality_query(m) for m in wlgen.MODALITIES]
        key_lists = [keys_for(top, step) for _, top, step, _ in four]
        expected = sum(sum(1 for s in specs if q[3](s)) for q in four)
        for server, (port, called) in ports.items():
            # A warm-up first: without it the serial runs encoded the bridge's answers and
            # the runs at once took them from its cache (1.56x where warm runs give 1.0x).
            together(port, called, key_lists)
            serial_runs, at_once_runs = [], []
            for _ in range(3):
                serial_start = time.perf_counter()
                serial = sum(together(port, called, [k])[1] for k in key_lists)
                serial_runs.append(time.perf_counter() - serial_start)
                at_once_s, at_once = together(port, called, key_lists)
                at_once_runs.append(at_once_s)
                assert serial == at_once == expected, f"{server}: wrong number of answers"
            serial_s, at_once_s = sorted(serial_runs)[1], sorted(at_once_runs)[1]
            result["concurrent"][server] = (serial_s, at_once_s)
            print(f"{items:>7} items  4 modalities ({expected} answers) {server:8s} one after "
                  f"another {serial_s * 1000:.0f} ms, at once {at_once_s * 1000:.0f} ms",
                  flush=True)
        result["rss_mb"] = rss_mb(pid)
    return result


def chart(results: list[dict], path: Path) -> None:
    """C-FIND time against worklist size (selective and a modality's month), and against
    the number of answers at the largest size."""
    try:
        import matplotlib
    except ImportError:  # not a dependency of the bridge: `pip install matplotlib`
        print(f"matplotlib not installed: no chart written to {path}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    sizes = [r["items"] for r in results]
    for ax, name in zip(axes[:2], ("selective", "modality month (CT)"), strict=True):
        for server, marker in zip(SERVERS, "os^", strict=True):
            ax.plot(sizes, [r["times"][(name, server)] * 1000 for r in results],
                    marker=marker, label=server)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} query")
        ax.set_xlabel("worklist items")
        ax.set_ylabel("C-FIND time, findscu, ms (log)")
        ax.grid(True, which="both", alpha=0.3)
    largest = results[-1]
    shown = sorted(largest["answers"].items(), key=lambda kv: kv[1])
    ax = axes[2]
    for server, marker in zip(SERVERS, "os^", strict=True):
        points = [(max(n, 1), largest["times"][(name, server)] * 1000) for name, n in shown
                  if (name, server) not in UNSUPPORTED]
        ax.plot([x for x, _ in points], [y for _, y in points],
                marker=marker, linestyle="none", label=server)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"{largest['items']:,} items: time against answers")
    ax.set_xlabel("answers to the query")
    ax.grid(True, which="both", alpha=0.3)
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

    lines = ["| items | query | answers | bridge ms | wlmscpfs ms | Orthanc ms | "
             "wlmscpfs / bridge | Orthanc / bridge |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, *_rest in query_set(r["items"]):
            b, w, o = (r["times"][(name, s)] * 1000 for s in SERVERS)
            w_ratio = "n/a*" if (name, "wlmscpfs") in UNSUPPORTED else f"{w / b:.1f}x"
            lines.append(f"| {r['items']:,} | {name} | {r['answers'][name]:,} | {b:.1f} | "
                         f"{w:.1f} | {o:.1f} | {w_ratio} | {o / b:.1f}x |")
    lines.append("")
    lines += [f"\\* {note}" for note in UNSUPPORTED.values()]
    table = "\n".join(lines)
    concurrent = ["| items | server | 4 modalities one after another ms | all 4 at once ms | "
                  "speed-up |", "|---|---|---|---|---|"]
    for r in results:
        for server in SERVERS:
            serial, at_once = r["concurrent"][server]
            concurrent.append(f"| {r['items']:,} | {server} | {serial * 1000:.0f} | "
                              f"{at_once * 1000:.0f} | {serial / at_once:.2f}x |")
    cpu = [f"- {r['items']:,} items, {name}: {ms:.3f} ms" for r in results
           for name, ms in r.get("cpu_per_answer_ms", {}).items()]
    png = args.results.parent / "cfind_scale.png"  # beside the results that link it
    chart(results, png)
    memory = ["| items | bridge start-up s | bridge RSS MB |", "|---|---|---|"]
    memory += [f"| {r['items']:,} | {r['startup_s']:.1f} | {r['rss_mb']:.0f} |" for r in results]
    largest = results[-1]
    verdict = (f"At {largest['items']:,} items: start-up {largest['startup_s']:.1f} s, RSS "
               f"{largest['rss_mb']:.0f} MB.")
    load = os.getloadavg()
    print(table, "\n".join(concurrent), "\n".join(cpu), "\n".join(memory), verdict,
          sep="\n\n")
    when = (f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, load average at the "
            f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    write_section(args.results, "C-FIND at scale", (
        f"`python bench/bench_scale.py --sizes {args.sizes}` on {when}. DCMTK findscu, a "
        "process per query (its start-up, about 10 ms, is in every figure), TCP_NODELAY=1 on "
        "every side; the same generated items in each server, the median of 3-5 runs after "
        "a warm-up. Selective: one accession; typical: one station AE and one day; broad: "
        "one day (1% of the items); modality month: one modality over 32 days (8% of the "
        "items); name prefix: `SMITH^G000123*`; ID prefix: `P00012*` (at 100,000 items). "
        "Ratios above 1: the bridge is that many times faster.\n\n"
        f"{table}\n\n![C-FIND time against worklist items and answers](cfind_scale.png)"
        "\n\nFour modalities (CT, MR, US, CR), each asking for its month, one after another "
        "and all at once (wall time until all four have every answer; after a warm-up, the "
        "median of 3 runs each; the findscu clients run on the same 2 cores):\n\n"
        + "\n".join(concurrent) + "\n\nThe bridge process's CPU per answer (user + system, "
        "from /proc, over the warm-up and timed runs of each query with 1,000 answers or "
        "more):\n\n" + "\n".join(cpu) + "\n\nThe bridge's start-up (process start to "
        "listening, its index loaded) and RSS after the queries above; \"Memory and "
        "start-up\" (bench/bench_memory.py) measures them at 100,000 and 1,000,000 items:\n\n"
        + "\n".join(memory) + "\n\n" + verdict))


if __name__ == "__main__":
    main()
