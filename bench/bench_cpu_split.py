"""Where the CPU goes: four modalities at once, and MLLP ingest with the folder sink.

    python bench/bench_cpu_split.py modalities --items 10000 [--runs 5]
    python bench/bench_cpu_split.py ingest [--orders 4000] [--runs 2]

Issue 13 asks for two figures this machine (2 cores) does not reach; this script measures
what limits them, so that a design is chosen from numbers:

- `modalities`: the four modalities' months (bench_scale) one after another and all at
  once, with the CPU each side spent (the bridge process from /proc, the findscu clients
  from the children's rusage) and the machine's idle share (/proc/stat). If the bridge's
  GIL were the limit, the bridge would use about one core during the concurrent run.
- `ingest`: orders/s on 4 connections, durable, with and without the `.wl` folder sink,
  user and system CPU per order of the bridge and of its writer process, and the machine's
  user/system/idle/iowait split.

Prints one line per run; nothing is written to results.md (the figures are quoted there by
hand, with the load average printed at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT), str(ROOT / "tests")]

import bench_ingest  # noqa: E402
import wlgen  # noqa: E402
from bench_cfind import findscu, findscu_keys, prepare, queries, servers  # noqa: E402
from bench_scale import cpu_seconds, modality_query, together  # noqa: E402


def machine() -> list[int]:
    """The machine's CPU counters (user, nice, system, idle, iowait, ...) in ticks."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def share(before: list[int], after: list[int], *fields: int) -> float:
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return sum(delta[f] for f in fields) / max(1, sum(delta))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def modalities(items: int, runs: int, workdir: Path) -> None:
    folder, data = prepare(workdir, items)
    keys = [findscu_keys(top, step) for _, top, step, _ in
            (modality_query(m) for m in wlgen.MODALITIES)]
    _, top, step, _ = queries(items)[0]
    selective = findscu_keys(top, step)
    with servers(workdir, folder, data) as running:
        port, pid = running.scp_port, running.bridge.pid
        together(port, "BRIDGE_MWL", keys)  # warm-up: identifiers encoded and cached
        cpu, start = cpu_seconds(pid), time.perf_counter()
        for _ in range(10):
            findscu(port, "BRIDGE_MWL", selective)
        print(f"{items} items, one association with 1 answer: "
              f"{(time.perf_counter() - start) * 100:.1f} ms wall, bridge CPU "
              f"{(cpu_seconds(pid) - cpu) * 100:.1f} ms", flush=True)
        ratios = []
        for _ in range(runs):
            c0, k0, m0 = cpu_seconds(pid), children_cpu(), machine()
            start = time.perf_counter()
            answers = sum(together(port, "BRIDGE_MWL", [k])[1] for k in keys)
            serial = time.perf_counter() - start
            c1, k1, m1 = cpu_seconds(pid), children_cpu(), machine()
            at_once, answers_at_once = together(port, "BRIDGE_MWL", keys)
            c2, k2, m2 = cpu_seconds(pid), children_cpu(), machine()
            assert answers == answers_at_once, "not the same answers"
            ratios.append(serial / at_once)
            print(f"{items} items, {answers} answers: one after another {serial * 1000:.0f} ms "
                  f"(bridge CPU {(c1 - c0) * 1000:.0f} ms, findscu {(k1 - k0) * 1000:.0f} ms, "
                  f"machine idle {share(m0, m1, 3, 4):.0%}); at once {at_once * 1000:.0f} ms "
                  f"(bridge CPU {(c2 - c1) * 1000:.0f} ms = {(c2 - c1) / at_once:.0%} of a core, "
                  f"findscu {(k2 - k1) * 1000:.0f} ms, machine idle {share(m1, m2, 3, 4):.0%}); "
                  f"speed-up {serial / at_once:.2f}x", flush=True)
        print(f"median speed-up {sorted(ratios)[len(ratios) // 2]:.2f}x", flush=True)


def _user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def ingest(orders: int, runs: int) -> None:
    per = orders // 4
    for folder in ("true", "false"):
        with tempfile.TemporaryDirectory() as tmp, \
                bench_ingest.server("bridge", Path(tmp),
                                    {"BRIDGE_SINKS__FOLDER__ENABLED": folder}) as running:
            bench_ingest.cpu_split(running.port, running.pid, 400, 4, "warm")
            family = bench_ingest._family(running.pid)
            for run in range(runs):
                before = {p: _user_system(p) for p in family}
                m0 = machine()
                batches = [bench_ingest.messages(f"s{run}c{c}-", per) for c in range(4)]
                elapsed, latencies = asyncio.run(bench_ingest.run_load(running.port, batches))
                m1 = machine()
                n = per * 4
                parts = [f"folder {'on ' if folder == 'true' else 'off'}: {n / elapsed:.0f} "
                         f"orders/s, ACK p50 {bench_ingest.pct(latencies, 50):.2f} ms"]
                for p in family:
                    user, system = (a - b for a, b in
                                    zip(_user_system(p), before[p], strict=True))
                    if user + system == 0:
                        continue
                    role = "bridge" if p == running.pid else "writer"
                    parts.append(f"{role} user {user / n * 1000:.2f} + system "
                                 f"{system / n * 1000:.2f} ms/order")
                parts.append(f"machine user {share(m0, m1, 0, 1):.0%} system "
                             f"{share(m0, m1, 2, 5, 6):.0%} idle {share(m0, m1, 3):.0%} "
                             f"iowait {share(m0, m1, 4):.0%}")
                print("; ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("modalities")
    m.add_argument("--items", type=int, default=10_000)
    m.add_argument("--runs", type=int, default=5)
    m.add_argument("--workdir", type=Path, help="keep generated files between runs")
    i = sub.add_parser("ingest")
    i.add_argument("--orders", type=int, default=4000)
    i.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if args.what == "modalities":
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            modalities(args.items, args.runs, args.workdir)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                modalities(args.items, args.runs, Path(tmp))
    else:
        ingest(args.orders, args.runs)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}", flush=True)


if __name__ == "__main__":
    main()
