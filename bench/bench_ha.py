"""Ingest with 1, 2 and 3 bridges on one PostgreSQL database against 1 bridge on SQLite.

    python bench/bench_ha.py [--orders N] [--connections C] [--pg URL] [--results bench/results.md]

Same load generator as bench_ingest.py (asyncio, one task per connection, each waiting for
its ACK before the next order); the C connections are spread over the instances in turn,
as a RIS pool or a TCP load balancer would. Each bridge runs the shipped config.yaml with
its own data folder (its .wl folder sink) and its SCP. Printed and written to the results
file: orders/s, ACK p50/p99, and with two or more instances the time from an AA on one
instance to the first C-FIND answer naming the order from another instance's SCP.
PostgreSQL: a fresh schema in the database at --pg (default: the test database that
scripts/test.sh creates).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from bench_ingest import messages, pct, write_section  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import ModalityWorklistInformationFind  # noqa: E402

from bridge.client import MllpClient  # noqa: E402

from orders import orm  # noqa: E402
from peers import bridge_env, free_port, wait_for_port  # noqa: E402

PG = "postgresql://bridge_test:bridge_test@127.0.0.1:5432/bridge_test"


class Instance:
    def __init__(self, workdir: Path, name: str, url: str | None):
        self.port, self.scp_port = free_port(), free_port()
        workdir.mkdir(parents=True)
        env = bridge_env(BRIDGE_DATA_DIR=str(workdir / "data"), BRIDGE_MLLP__PORT=str(self.port),
                         BRIDGE_SCP__PORT=str(self.scp_port), BRIDGE_METRICS__ENABLED="false",
                         BRIDGE_LOG_LEVEL="WARNING", BRIDGE_STORE__INSTANCE=name,
                         **({"BRIDGE_STORE__URL": url} if url else {}))
        with open(workdir / "bridge.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve", "--config", str(ROOT / "config.yaml")],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


async def load(targets: list[tuple[int, list[bytes]]]) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def one(port: int, batch: list[bytes]) -> None:
        async with MllpClient("127.0.0.1", port, timeout=30) as client:
            for raw in batch:
                t0 = time.perf_counter()
                ack = await client.send(raw)
                latencies.append(time.perf_counter() - t0)
                if b"MSA|AA|" not in ack:
                    raise RuntimeError(f"not AA: {ack[:200]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p, b) for p, b in targets))
    return time.perf_counter() - t0, latencies


def propagation(writer: Instance, reader: Instance, samples: int, pause: float = 0.0
                ) -> list[float]:
    """AA on `writer` -> first C-FIND answer from `reader`'s SCP naming the order (s)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", reader.scp_port, ae_title="BRIDGE_MWL")
    out = []

    async def send(raw: bytes) -> None:
        async with MllpClient("127.0.0.1", writer.port, timeout=30) as client:
            await client.send(raw)

    try:
        for n in range(samples):
            accession = f"PR{uuid.uuid4().hex[:10]}"
            asyncio.run(send(orm(f"pr{accession}", order=accession,
                                 accession=accession).encode("latin-1")))
            t0 = time.perf_counter()
            query = Dataset()
            query.AccessionNumber = accession
            query.ScheduledProcedureStepSequence = Sequence([Dataset()])
            while True:
                found = [ds for status, ds in assoc.send_c_find(
                    query, ModalityWorklistInformationFind) if status and
                    status.Status in (0xFF00, 0xFF01)]
                if found:
                    break
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"sample {n}: not answered by the other SCP in 30 s")
                time.sleep(0.002)  # leave the CPU to the bridges (2 cores for everything)
            out.append(time.perf_counter() - t0)
            time.sleep(pause)
    finally:
        assoc.release()
    return out


def run(label: str, count: int, url: str | None, work: Path, orders: int, connections: int,
        samples: int) -> dict:
    instances = [Instance(work / f"{label}-{i}", f"{label}-{i}", url) for i in range(count)]
    try:
        warm = [(inst.port, messages(f"w{label}{i}-", 100)) for i, inst in enumerate(instances)]
        asyncio.run(load(warm))
        per = orders // connections
        targets = [(instances[c % count].port, messages(f"{label}c{c}-", per))
                   for c in range(connections)]
        busy: list[float] = []
        prober = None
        if count > 1:  # propagation while the load runs, one sample at a time
            prober = threading.Thread(target=lambda: busy.extend(
                propagation(instances[0], instances[1], max(samples // 4, 5), pause=0.2)))
            prober.start()
        elapsed, lat = asyncio.run(load(targets))
        if prober is not None:
            prober.join()
        row = {"rate": per * connections / elapsed, "p50": pct(lat, 50), "p99": pct(lat, 99)}
        if busy:
            row["busy50"], row["busy99"] = pct(busy, 50), pct(busy, 99)
        if count > 1:
            # Measured once the sinks caught up with the load (each instance writes every
            # order to its own folder): the propagation of a quiet cluster.
            deadline = time.time() + 120
            with psycopg.connect(url) as conn:
                while time.time() < deadline and conn.execute(
                        "SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0]:
                    time.sleep(0.5)
            prop = propagation(instances[0], instances[1], samples)
            row["prop50"], row["prop99"] = pct(prop, 50), pct(prop, 99)
        return row
    finally:
        for inst in instances:
            inst.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--pg", default=PG)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows["1 on SQLite"] = run("sqlite", 1, None, work, args.orders, args.connections, 0)
        for count in (1, 2, 3):
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            sep = "&" if "?" in args.pg else "?"
            url = f"{args.pg}{sep}options=-csearch_path%3D{schema}"
            try:
                rows[f"{count} on PostgreSQL"] = run(f"pg{count}", count, url, work,
                                                     args.orders, args.connections,
                                                     args.samples)
            finally:
                with psycopg.connect(args.pg, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    lines = ["| instances | orders/s | ACK p50 ms | ACK p99 ms | AA on one -> other's SCP "
             "answers, quiet, p50 / p99 ms | the same during the load |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        prop = f"{r['prop50']:.1f} / {r['prop99']:.1f}" if "prop50" in r else "-"
        busy = f"{r['busy50']:.1f} / {r['busy99']:.1f}" if "busy50" in r else "-"
        lines.append(f"| {name} | {r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{prop} | {busy} |")
    table = "\n".join(lines)
    print(table)
    body = (f"`python bench/bench_ha.py --orders {args.orders} --connections "
            f"{args.connections}` on 2 cores shared with the database and the load generator, "
            f"{time.strftime('%Y-%m-%d')}. Every instance runs config.yaml (durable commit "
            "before AA, its own .wl folder, its SCP); the connections are spread over the "
            "instances in turn.\n\n" + table + "\n")
    write_section(args.results, "Several instances on PostgreSQL", body)


if __name__ == "__main__":
    main()
