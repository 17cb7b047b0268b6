"""MLLP ingest: orders per second and ACK latency, the bridge against a bare ACK server.

    python bench/bench_ingest.py [--orders N] [--paced-seconds S] [--results bench/results.md]

Both servers run as subprocesses on loopback, measured in the same run by the same load
generator (asyncio, one task per connection, each waiting for its ACK before the next
order). The bridge runs on the shipped config.yaml (durable SQLite commit before each AA,
folder sink writing .wl files) on a fresh data folder. Printed and written to the results
file: throughput with 1 and 4 connections and the ratio to the bare server; ACK latency
p50/p95/p99; p99 at a paced 200 orders/s; the cost of strict structure validation.
Targets (issue 7): >= 1,000 orders/s with 4 connections; p50 < 2 ms on one connection;
p99 < 20 ms at 200 orders/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bridge.client import MllpClient  # noqa: E402

from orders import orm  # noqa: E402
from peers import bridge_env, free_port, wait_for_port  # noqa: E402


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _family(pid: int) -> list[int]:
    """The process and its children (the folder sink's writer process)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *map(int, out.split())]


def cpu_split(port: int, pid: int, orders: int, connections: int, tag: str) -> dict:
    """Orders/s over `connections`, and the CPU each process spent per order."""
    family = _family(pid)
    before = {p: _cpu_seconds(p) for p in family}
    mine = time.process_time()
    per = orders // connections
    elapsed, _ = asyncio.run(run_load(port, [messages(f"{tag}{c}-", per)
                                             for c in range(connections)]))
    n = per * connections
    split = {"rate": n / elapsed, "bridge": (_cpu_seconds(pid) - before[pid]) / n * 1000,
             "writer": sum(_cpu_seconds(p) - before[p] for p in family[1:]) / n * 1000,
             "client": (time.process_time() - mine) / n * 1000}
    split["bridge_load"] = split["bridge"] * split["rate"] / 1000  # share of one core
    return split


@dataclass
class Running:
    port: int
    pid: int


@contextmanager
def server(kind: str, workdir: Path, extra_env: dict | None = None):
    port = free_port()
    if kind == "bare":
        cmd = [sys.executable, str(ROOT / "bench" / "bare_ack_server.py"), str(port)]
        env = dict(os.environ)
    else:
        cmd = [sys.executable, "-m", "bridge", "serve", "--config", str(ROOT / "config.yaml")]
        env = bridge_env(BRIDGE_DATA_DIR=str(workdir / "data"), BRIDGE_MLLP__PORT=str(port),
                         BRIDGE_METRICS__ENABLED="false", BRIDGE_SCP__ENABLED="false",
                         BRIDGE_LOG_LEVEL="WARNING", **(extra_env or {}))
    with open(workdir / f"{kind}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, timeout=30)
        yield Running(port, proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def messages(prefix: str, n: int) -> list[bytes]:
    return [orm(f"{prefix}{i}", order=f"{prefix}{i}", accession=f"{prefix}{i}"[-16:],
                patient_id=f"P{i % 997}").encode("latin-1") for i in range(n)]


async def run_load(port: int, batches: list[list[bytes]], rate: float | None = None
                   ) -> tuple[float, list[float]]:
    """Send each batch on its own connection; returns (elapsed s, ACK latencies in s)."""
    latencies: list[float] = []

    async def one(batch: list[bytes]) -> None:
        async with MllpClient("127.0.0.1", port, timeout=30) as client:
            start = time.perf_counter()
            for i, raw in enumerate(batch):
                if rate:
                    await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                t0 = time.perf_counter()
                ack = await client.send(raw)
                latencies.append(time.perf_counter() - t0)
                if b"MSA|AA|" not in ack:
                    raise RuntimeError(f"not AA: {ack[:200]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in batches))
    return time.perf_counter() - t0, latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


def measure(kind: str, port: int, orders: int, connections: int, tag: str) -> dict:
    per = orders // connections
    batches = [messages(f"{tag}{kind[0]}{c}-", per) for c in range(connections)]
    elapsed, lat = asyncio.run(run_load(port, batches))
    return {"rate": per * connections / elapsed, "p50": pct(lat, 50), "p95": pct(lat, 95),
            "p99": pct(lat, 99)}


class FolderWatch:
    """Counts the .wl files of a folder every 10 ms in a thread: when the n-th file
    appeared, to compare with when the n-th AA was received (files are written in the
    order their commits were; the n-th file stands for the n-th order)."""

    def __init__(self, folder: Path):
        import threading

        self.folder = folder
        self.seen: list[float] = []  # seen[n-1]: when there were first n files
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            count = sum(1 for _ in os.scandir(self.folder)) if self.folder.exists() else 0
            now = time.monotonic()
            while len(self.seen) < count:
                self.seen.append(now)
            time.sleep(0.01)

    def __enter__(self) -> FolderWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def acked_times(port: int, batches: list[list[tuple[str, bytes]]], rate: float | None
                      ) -> dict[str, float]:
    """Send each batch of (tag, message) on its own connection, at `rate` messages/s in all
    (None: as fast as they go); when each AA came, by tag. time.monotonic() is
    CLOCK_MONOTONIC, the same clock in every process (the Orthanc double's arrivals)."""
    acked: dict[str, float] = {}

    async def one(batch: list[tuple[str, bytes]], per_connection_rate: float | None) -> None:
        async with MllpClient("127.0.0.1", port, timeout=30) as client:
            start = time.monotonic()
            for i, (tag, raw) in enumerate(batch):
                if per_connection_rate:
                    await asyncio.sleep(max(0.0, start + i / per_connection_rate
                                            - time.monotonic()))
                ack = await client.send(raw)
                if b"MSA|AA|" not in ack:
                    raise RuntimeError(f"not AA: {ack[:200]!r}")
                acked[tag] = time.monotonic()

    per = rate / len(batches) if rate else None
    await asyncio.gather(*(one(b, per) for b in batches))
    return acked


def tagged(prefix: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i}", raw) for i, raw in enumerate(messages(prefix, n))]


def folder_pace(workdir: Path, burst: int, rate: float, seconds: float) -> dict:
    """A fresh bridge with its folder sink: (1) `rate` orders/s on 4 connections for
    `seconds`, the delay from each AA to its file; (2) a burst of `burst` orders on 4
    connections as fast as they go: files at the last ACK, and when the folder was complete."""
    out: dict = {}
    with server("bridge", workdir) as running:
        folder = workdir / "data" / "worklists"
        measure("bridge", running.port, 100, 1, "warm")
        time.sleep(1.0)
        base = sum(1 for _ in os.scandir(folder))  # the warm-up's files and the lockfile
        n = int(rate * seconds) // 4 * 4
        with FolderWatch(folder) as watch:
            acked = sorted(asyncio.run(acked_times(
                running.port, [tagged(f"pace{c}-", n // 4) for c in range(4)], rate)).values())
            deadline = time.monotonic() + 60
            while len(watch.seen) < base + n and time.monotonic() < deadline:
                time.sleep(0.05)
        delays = [watch.seen[base + k] - t for k, t in enumerate(acked)
                  if base + k < len(watch.seen)]
        out["paced"] = {"rate": n / (acked[-1] - acked[0]), "p50": pct(delays, 50),
                        "p99": pct(delays, 99), "missing": n - len(delays)}
        time.sleep(1.0)
        base = sum(1 for _ in os.scandir(folder))
        n = burst // 4 * 4
        with FolderWatch(folder) as watch:
            acked = sorted(asyncio.run(acked_times(
                running.port, [tagged(f"burst{c}-", n // 4) for c in range(4)], None)).values())
            at_last_ack = sum(1 for _ in os.scandir(folder)) - base
            deadline = time.monotonic() + 300
            while len(watch.seen) < base + n and time.monotonic() < deadline:
                time.sleep(0.05)
        done = watch.seen[base + n - 1] if len(watch.seen) >= base + n else float("nan")
        out["burst"] = {"orders": n, "rate": n / (acked[-1] - acked[0]),
                        "at_last_ack": at_last_ack, "complete_after_s": done - acked[-1]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=4000)
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    parser.add_argument("--burst", type=int, default=10_000,
                        help="orders of the folder sink's burst (0: no folder measurement)")
    parser.add_argument("--no-folder", action="store_true",
                        help="run the bridge without its .wl folder sink (to isolate ingest)")
    args = parser.parse_args()
    extra = {"BRIDGE_SINKS__FOLDER__ENABLED": "false"} if args.no_folder else {}
    rows, lines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind in ("bare", "bridge"):
            with server(kind, work, extra) as running:
                port = running.port
                measure(kind, port, 200, 1, "warm")  # warm up imports, caches, the store
                for connections in (1, 4):
                    rows[(kind, connections)] = measure(kind, port, args.orders, connections,
                                                        f"c{connections}")
                if kind == "bridge":
                    n = int(200 * args.paced_seconds)
                    _, lat = asyncio.run(run_load(port, [messages("paced", n)], rate=200))
                    rows[("bridge", "paced")] = {"rate": 200.0, "p50": pct(lat, 50),
                                                 "p95": pct(lat, 95), "p99": pct(lat, 99)}
        # Where four connections' time goes: CPU per order of each process, with and without
        # the folder sink (its writer process encodes and writes the .wl files).
        splits = {}
        for label, env in (("with the .wl folder sink", {}),
                           ("without it", {"BRIDGE_SINKS__FOLDER__ENABLED": "false"})):
            (work / label[:7]).mkdir()
            with server("bridge", work / label[:7], env) as running:
                measure("bridge", running.port, 200, 1, "warm")
                splits[label] = cpu_split(running.port, running.pid, args.orders, 4,
                                          f"s{len(splits)}")
        pace = None
        if args.burst and not args.no_folder:
            (work / "pace").mkdir()
            pace = folder_pace(work / "pace", args.burst, 500.0, 5.0)
        (work / "strict").mkdir()
        with server("bridge", work / "strict", {"BRIDGE_MLLP__STRICT": "true", **extra}) \
                as running:
            measure("bridge", running.port, 200, 1, "warm")
            rows[("strict", 1)] = measure("bridge", running.port, args.orders // 2, 1, "strict")

    def row(name: str, r: dict, ratio: str = "") -> str:
        return (f"| {name} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p95']:.2f} | "
                f"{r['p99']:.2f} | {ratio} |")

    lines.append("| server, load | orders/s | ACK p50 ms | p95 ms | p99 ms | bridge / bare |")
    lines.append("|---|---|---|---|---|---|")
    for connections in (1, 4):
        bare, bridge = rows[("bare", connections)], rows[("bridge", connections)]
        lines.append(row(f"bare ACK server, {connections} connection(s)", bare))
        lines.append(row(f"bridge, {connections} connection(s)", bridge,
                         f"{bridge['rate'] / bare['rate']:.2f}"))
    lines.append(row("bridge, 1 connection paced at 200 orders/s", rows[("bridge", "paced")]))
    strict = rows[("strict", 1)]
    lines.append(row("bridge with mllp.strict (hl7apy structures), 1 connection", strict,
                     f"{strict['rate'] / rows[('bridge', 1)]['rate']:.2f} of non-strict"))
    four, one, paced = rows[("bridge", 4)], rows[("bridge", 1)], rows[("bridge", "paced")]
    verdicts = [
        f"- >= 1,000 orders/s with 4 connections: {four['rate']:,.0f} "
        f"({'met' if four['rate'] >= 1000 else 'MISSED'})",
        f"- ACK p50 < 2 ms on one connection: {one['p50']:.2f} ms "
        f"({'met' if one['p50'] < 2 else 'MISSED'})",
        f"- ACK p99 < 20 ms at 200 orders/s: {paced['p99']:.2f} ms "
        f"({'met' if paced['p99'] < 20 else 'MISSED'})",
    ]
    split_lines = ["", "CPU per order with 4 connections (from /proc, same run):", "",
                   "| bridge | orders/s | bridge process ms CPU/order (share of one core) | "
                   "writer process ms/order | load generator ms/order |",
                   "|---|---|---|---|---|"]
    for label, sp in splits.items():
        split_lines.append(f"| {label} | {sp['rate']:,.0f} | {sp['bridge']:.2f} "
                           f"({sp['bridge_load'] * 100:.0f}%) | {sp['writer']:.2f} | "
                           f"{sp['client']:.2f} |")
    pace_lines = []
    if pace is not None:
        paced, burst = pace["paced"], pace["burst"]
        pace_lines = [
            "", "The .wl folder keeping pace (a fresh bridge, 4 connections; the n-th file "
            "to appear stands for the n-th AA):", "",
            f"- paced at 500 orders/s (reached {paced['rate']:,.0f}/s): AA to file p50 "
            f"{paced['p50']:.0f} ms, p99 {paced['p99']:.0f} ms (target p99 <= 1,000 ms: "
            f"{'met' if paced['p99'] <= 1000 and not paced['missing'] else 'MISSED'})",
            f"- burst of {burst['orders']:,} orders ({burst['rate']:,.0f}/s): "
            f"{burst['at_last_ack']:,} files at the last ACK, complete "
            f"{burst['complete_after_s']:.1f} s after it (target <= 2 s: "
            f"{'met' if burst['complete_after_s'] <= 2 else 'MISSED'})"]
    text = "\n".join([*lines, "", *verdicts, *split_lines, *pace_lines])
    print(text)
    write_section(args.results, "MLLP ingest", (
        f"`python bench/bench_ingest.py --orders {args.orders}` on "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}. Every order is a new ORM^O01 "
        "committed durably (SQLite WAL, synchronous=FULL) before its AA; the folder sink "
        "writes its .wl file meanwhile. The load generator runs on the same machine.\n\n"
        + text))


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or add) the `## title` section of the results file."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(f"\n## {title}\n")
    section = f"\n## {title}\n\n{body.strip()}\n"
    if start == -1:
        text = text.rstrip("\n") + "\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end != -1 else "")
    path.write_text(text)


if __name__ == "__main__":
    main()
