"""Memory and start-up of the bridge with its SCP on, at 100,000 and 1,000,000 items.

    python bench/bench_memory.py [--sizes 100000,1000000] [--workdir DIR] [--rounds 3,1]
                                 [--code DIR ... --labels A,B] [--profile] [--no-write]

1. Writes the generated items (tests/wlgen.py, 100 days, 20 stations: the same items
   bench_cfind and bench_scale serve) straight into a fresh SQLite store through the
   Store API, in batches, once per size, kept under `--workdir` (default
   $TMPDIR/bridge-bench-memory): ingesting 1,000,000 orders over MLLP would take hours; `import-wl`
   would first need 1,000,000 `.wl` files.
2. Starts the real bridge (`python -m bridge serve`, SCP on, sinks off, as
   bench_cfind.servers does) on each store and measures start-up (process start to
   listening: the SCP's index is loaded before MLLP listens), RSS and its high-water mark
   after start-up, and RSS after one selective (accession) and one broad (a modality's
   month, 8 % of the items) C-FIND through DCMTK findscu.
   With several `--code` folders (checkouts of the bridge, e.g. before and after a
   change), runs them interleaved, `--rounds` times each, and reports medians.
3. `--profile`: where start-up goes, in this process: the SQL fetch of the rows, their
   JSON decode, the index build; and the index's memory per item (tracemalloc).
4. Writes the "Memory and start-up" section of bench/results.md (not with --no-write).
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import wlgen  # noqa: E402
from bench_cfind import DAYS, findscu  # noqa: E402
from bench_cfind import findscu_keys as keys_for  # noqa: E402
from bench_ingest import write_section  # noqa: E402

from peers import free_port, wait_for_port  # noqa: E402

MODALITY = "Modality"
SPS_DATE = "ScheduledProcedureStepStartDate"
# 32 of the 100 generated days, one modality of four: 8 % of the items (bench_scale's
# "modality month").
MONTH = ("20240101", "20240201")
BATCH = 10_000


def templates() -> dict[str, dict]:
    """Each modality's item as `import-wl` stores it (item_from_dataset of the .wl
    template that wlgen fills in): the stored items are those of bench_scale's stores."""
    import pydicom
    from pydicom import config

    from bridge.scp.importing import item_from_dataset

    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE  # the placeholders
    try:
        return {m: item_from_dataset(pydicom.dcmread(io.BytesIO(wlgen._template(m)),
                                                     force=True))
                for m in wlgen.MODALITIES}
    finally:
        config.settings.reading_validation_mode = mode


def generated(i: int, template: dict) -> dict:
    values = wlgen.spec(i, DAYS)
    item = copy.deepcopy(template)
    for node in (item, item["ScheduledProcedureStepSequence"][0]):
        for keyword in node:
            if keyword in wlgen._PLACEHOLDERS:
                node[keyword] = values[keyword]
    return item


def make_store(workdir: Path, items: int) -> Path:
    """The data folder of a bridge whose store holds `items` SCHEDULED items; made once."""
    from bridge.lifecycle import Status, item_key
    from bridge.store import ItemWrite, open_store

    data = workdir / f"data-{items}"
    done = data / "complete"
    if done.exists():
        return data
    data.mkdir(parents=True, exist_ok=True)
    (data / "bridge.sqlite").unlink(missing_ok=True)
    start = time.perf_counter()
    by_modality = templates()
    store = open_store(data / "bridge.sqlite", [])  # no sinks: no outbox rows
    try:
        for first in range(0, items, BATCH):
            writes = []
            for i in range(first, min(first + BATCH, items)):
                item = generated(i, by_modality[wlgen.MODALITIES[i % 4]])
                # import-wl's order key for gen_<i>.wl (no placer order number).
                order = f"wl:gen_{i:07d}"
                writes.append(ItemWrite(item_key(order, item), order,
                                        Status.SCHEDULED.value, True, item))
            store.write_items(writes)
    finally:
        store.close()
    done.write_text(str(items))
    print(f"wrote {items:,} items into {data} in {time.perf_counter() - start:.0f} s",
          flush=True)
    return data


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the high-water mark) in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def env_for(code: Path, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(PYTHONPATH=str(code), BRIDGE_DATA_DIR=str(data), TCP_NODELAY="1",
               BRIDGE_SINKS__FOLDER__ENABLED="false", BRIDGE_SCP__LOG_QUERIES="false",
               **extra)
    return env


def measure(code: Path, data: Path, items: int) -> dict:
    """One bridge from `code` on `data`: start-up, memory, two queries."""
    scp_port, mllp_port = free_port(), free_port()
    log = open(data.parent / "bridge.log", "ab")  # noqa: SIM115 - closed below
    start = time.perf_counter()
    bridge = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--config", str(ROOT / "config.yaml")],
        cwd=data.parent, stdout=log, stderr=subprocess.STDOUT,
        env=env_for(code, data, BRIDGE_SCP__ENABLED="true", BRIDGE_SCP__PORT=str(scp_port),
                    BRIDGE_MLLP__PORT=str(mllp_port), BRIDGE_METRICS__ENABLED="false"))
    try:
        wait_for_port(mllp_port, bridge, timeout=900)  # the SCP's index loads before MLLP
        result: dict = {"startup_s": time.perf_counter() - start,
                        "startup_cpu_s": cpu_seconds(bridge.pid)}
        after = proc_status(bridge.pid)
        result["rss_start_mb"], result["hwm_start_mb"] = after["VmRSS"], after["VmHWM"]
        accession = f"A{items * 54321 // 100_000:09d}"
        assert findscu(scp_port, "BRIDGE_MWL", keys_for({"AccessionNumber": accession},
                                                       {})) == 1
        low, high = MONTH
        broad = keys_for({}, {MODALITY: "CT", SPS_DATE: f"{low}-{high}"})
        expected = sum(1 for i in range(0, items, 4) if i % DAYS < 32)
        cpu = cpu_seconds(bridge.pid)
        began = time.perf_counter()
        assert findscu(scp_port, "BRIDGE_MWL", broad) == expected
        result["broad_s"] = time.perf_counter() - began
        result["broad_answers"] = expected
        result["broad_cpu_ms_per_answer"] = (cpu_seconds(bridge.pid) - cpu) / expected * 1000
        after = proc_status(bridge.pid)
        result["rss_query_mb"], result["hwm_query_mb"] = after["VmRSS"], after["VmHWM"]
        return result
    finally:
        bridge.terminate()
        bridge.wait(60)
        log.close()


def profile_load(data: Path, sample: int = 20_000) -> dict:
    """Where start-up's load goes, in this process, as ScpService.start loads the index
    (pages of 2,000, cyclic GC off): CPU seconds of the SQL fetch alone, of the store's
    page calls (the fetch, the JSON decode, the StoredItems), of the index build and of
    sorting its prefix lists; and the index's memory per item, from tracemalloc over the
    first `sample` items (their decoded datasets included)."""
    import sqlite3

    from bridge.scp.index import WorklistIndex
    from bridge.store import open_store

    statuses = ("SCHEDULED",)
    out: dict = {}
    db = sqlite3.connect(str(data / "bridge.sqlite"))
    began = time.process_time()
    for _row in db.execute("SELECT * FROM items"):
        pass
    out["sql_s"] = time.process_time() - began
    db.close()
    store = open_store(data / "bridge.sqlite", [])
    gc.collect()
    gc.disable()
    try:
        tracemalloc.start()
        index = WorklistIndex(statuses)
        after = ""
        while len(index) < sample and (page := store.items_with_status(statuses, after,
                                                                        2000)):
            index.load(page)
            after = page[-1].item_key
        index.candidates(())
        del page
        out["bytes_per_item"] = tracemalloc.get_traced_memory()[0] / len(index)
        tracemalloc.stop()
        del index
        index = WorklistIndex(statuses)
        store_s = index_s = 0.0
        after = ""
        while True:
            began = time.process_time()
            page = store.items_with_status(statuses, after, 2000)
            loaded = time.process_time()
            store_s += loaded - began
            if not page:
                break
            index.load(page)
            index_s += time.process_time() - loaded
            after = page[-1].item_key
        began = time.process_time()
        index.candidates(())
        out["sort_s"] = time.process_time() - began
        out["store_s"], out["index_s"], out["items"] = store_s, index_s, len(index)
    finally:
        gc.enable()
        store.close()
    return out


def profile_text(items: int, p: dict) -> str:
    return (f"{items:,} items, CPU s: SQL fetch {p['sql_s']:.1f}, store page calls "
            f"{p['store_s']:.1f} (the fetch plus the JSON decode: {p['store_s'] - p['sql_s']:.1f}"
            f" more), index build {p['index_s']:.1f}, sorting the prefix lists "
            f"{p['sort_s']:.1f}; index memory {p['bytes_per_item']:,.0f} bytes per item "
            "(tracemalloc, datasets included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "bridge-bench-memory")
    parser.add_argument("--code", type=Path, action="append",
                        help="a checkout of the bridge to run (repeat to compare; default: "
                             "this one)")
    parser.add_argument("--labels", help="names of the --code folders, comma-separated")
    parser.add_argument("--rounds", default="1",
                        help="runs per checkout: one number, or one per size (3,1)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds = [int(r) for r in args.rounds.split(",")]
    rounds_of = dict(zip(sizes, rounds * len(sizes) if len(rounds) == 1 else rounds,
                         strict=True))
    codes = args.code or [ROOT]
    labels = dict(zip(codes, args.labels.split(",") if args.labels else
                      [c.name for c in codes], strict=True))
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[int, str, dict]] = []
    profiles: dict[int, dict] = {}
    for items in sizes:
        data = make_store(args.workdir, items)
        runs: dict[Path, list[dict]] = {c: [] for c in codes}
        for _ in range(rounds_of[items]):
            for code in codes:  # interleaved: A B A B ...
                r = measure(code, data, items)
                runs[code].append(r)
                print(f"{items:>9,} items  {code}: start-up {r['startup_s']:.1f} s "
                      f"(CPU {r['startup_cpu_s']:.1f} s), RSS {r['rss_start_mb']:.0f} MB "
                      f"(peak {r['hwm_start_mb']:.0f}), after queries "
                      f"{r['rss_query_mb']:.0f} MB; broad {r['broad_answers']:,} answers "
                      f"{r['broad_s']:.2f} s, {r['broad_cpu_ms_per_answer']:.3f} ms CPU "
                      "per answer", flush=True)
        for code in codes:
            median = {k: statistics.median(r[k] for r in runs[code]) for k in runs[code][0]}
            rows.append((items, labels[code], median))
        if args.profile:
            profiles[items] = profile_load(data)
            print(profile_text(items, profiles[items]), flush=True)
    load = os.getloadavg()
    when = (f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, load average at the "
            f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    table = ["| items | start-up s | start-up CPU s | RSS after start-up MB | peak RSS MB | "
             "RSS after queries MB | broad C-FIND s (answers) |", "|---|---|---|---|---|---|---|"]
    for items, code, m in rows:
        label = f"{items:,}" if len(codes) == 1 else f"{items:,} ({code})"
        table.append(f"| {label} | {m['startup_s']:.1f} | {m['startup_cpu_s']:.1f} | "
                     f"{m['rss_start_mb']:.0f} | {m['hwm_query_mb']:.0f} | "
                     f"{m['rss_query_mb']:.0f} | {m['broad_s']:.2f} "
                     f"({int(m['broad_answers']):,}) |")
    print("\n".join(table))
    if args.no_write:
        return
    command = " ".join(["python bench/bench_memory.py", *sys.argv[1:]])
    body = (f"`{command}` on "
            f"{when}. The bridge (`python -m bridge serve`, SCP on, sinks off) on a SQLite "
            "store holding the generated items (tests/wlgen.py, written through the Store "
            "API); start-up is process start to listening (the SCP's index is loaded before "
            "MLLP listens); RSS is read after start-up and after one selective and one broad "
            "C-FIND (one modality's month: 8 % of the items) through findscu; peak RSS is "
            "the kernel's high-water mark (VmHWM). Medians of "
            + ", ".join(f"{rounds_of[n]} run(s) at {n:,}" for n in sizes)
            + (" items, the checkouts interleaved (A B A B ...): `before` is the branch point "
               "of this work, `after` this checkout" if len(codes) > 1 else " items")
            + ".\n\n"
            + "\n".join(table)
            + "".join(f"\n\nWhere the load goes (`--profile`, in-process): "
                      f"{profile_text(n, p)}." for n, p in profiles.items()))
    write_section(args.results, "Memory and start-up", body)


if __name__ == "__main__":
    main()
