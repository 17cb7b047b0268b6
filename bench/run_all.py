"""Every benchmark, one after the other; figures printed and written to bench/results.md.

    python bench/run_all.py [--quick]

Runs bench_translate (mapping speed), bench_ingest (MLLP ingest against a bare ACK server),
bench_orthanc_sink (the Orthanc sink against the /worklists test double),
bench_scale (C-FIND against wlmscpfs and Orthanc 1.10.1 at each of `--sizes`: selective,
typical, broad, a modality's month, name and ID prefixes, four modalities at once, the
bridge's CPU per answer, a chart) and bench_cfind (the built-in SCP against wlmscpfs at the
largest size through pynetdicom and findscu, and its CPU per answer in-process, with and
without direct responses), then bench_memory (start-up time and memory at
`--memory-sizes`, 100,000 and 1,000,000 items by default). The load average is recorded before and
after: on a shared machine, quote the ratios of one run, not absolute times. `--quick`
uses smaller sizes (a smoke test of the scripts, not figures to quote).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from bench_ingest import write_section  # noqa: E402


def run(args: list[str]) -> str:
    print(f"$ python bench/{' '.join(args)}", flush=True)
    out = subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], text=True,
                         capture_output=True, check=False)
    print(out.stdout + out.stderr, flush=True)
    if out.returncode != 0:
        raise SystemExit(f"bench/{args[0]} failed with exit {out.returncode}")
    return out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="worklist sizes for C-FIND; the largest also for bench_cfind")
    parser.add_argument("--memory-sizes", default="100000,1000000",
                        help="worklist sizes for start-up time and memory (bench_memory)")
    parser.add_argument("--workdir", type=Path,
                        help="generated .wl files and stores, shared by the C-FIND benches")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    started = time.time()
    before = os.getloadavg()
    translate = run(["bench_translate.py", "--runs", "1000" if args.quick else "5000"])
    write_section(ROOT / "results.md", "Mapping speed",
                  "`python bench/bench_translate.py`: decode, parse, choose the profile and "
                  "map one ORM^O01 (the MESA 2019 order), with the trace the processor keeps."
                  "\n\n```\n" + translate.strip() + "\n```")
    run(["bench_ingest.py", *(["--orders", "1000", "--paced-seconds", "2"] if args.quick
                              else [])])
    run(["bench_orthanc_sink.py", *(["--burst", "2000", "--seconds", "2"] if args.quick
                                    else [])])
    sizes = "500,2000" if args.quick else args.sizes
    largest = max(int(n) for n in sizes.split(","))
    run(["bench_scale.py", "--sizes", sizes, "--workdir", str(work)])
    run(["bench_cfind.py", "--items", str(largest), "--workdir", str(work / str(largest))])
    run(["bench_memory.py", "--sizes", "2000,10000" if args.quick else args.memory_sizes,
         "--workdir", str(work / "memory")])
    after = os.getloadavg()
    write_section(ROOT / "results.md", "This run", (
        f"`python bench/run_all.py --sizes {sizes}`, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))} to "
        f"{time.strftime('%H:%M')}, {os.cpu_count()} cores shared with other work: load "
        f"average {before[0]:.1f} / {before[1]:.1f} / {before[2]:.1f} at the start, "
        f"{after[0]:.1f} / {after[1]:.1f} / {after[2]:.1f} at the end. Absolute times vary "
        "with the load; the ratios compare servers measured in the same run, one query "
        "after another."))
    print(f"all benchmarks done in {time.time() - started:.0f} s: bench/results.md")


if __name__ == "__main__":
    main()
