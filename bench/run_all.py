"""Every benchmark, one after the other; figures printed and written to bench/results.md.

    python bench/run_all.py [--quick]

Runs bench_translate (mapping speed), bench_ingest (MLLP ingest against a bare ACK server),
bench_cfind (the built-in SCP against wlmscpfs at 100,000 items) and bench_scale (C-FIND
against wlmscpfs and Orthanc at 1,000 / 10,000 / 100,000 items, with a chart; memory and
start-up at 100,000). Run it on an otherwise idle machine: the ratios are only fair when
nothing else competes for the two cores. `--quick` uses smaller sizes (a smoke test of the
scripts, not figures to quote).
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--workdir", type=Path,
                        help="generated .wl files and stores, shared by the C-FIND benches")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    started = time.time()
    translate = run(["bench_translate.py", "--runs", "1000" if args.quick else "5000"])
    write_section(ROOT / "results.md", "Mapping speed",
                  "`python bench/bench_translate.py`: decode, parse, choose the profile and "
                  "map one ORM^O01 (the MESA 2019 order), with the trace the processor keeps."
                  "\n\n```\n" + translate.strip() + "\n```")
    run(["bench_ingest.py", *(["--orders", "1000", "--paced-seconds", "2"] if args.quick
                              else [])])
    cfind = ROOT / "bench_cfind.py"
    largest = 2000 if args.quick else 100_000
    if cfind.exists():
        run(["bench_cfind.py", "--items", str(largest), "--workdir", str(work / str(largest))])
    scale = ROOT / "bench_scale.py"
    if scale.exists():
        sizes = "500,2000" if args.quick else "1000,10000,100000"
        run(["bench_scale.py", "--sizes", sizes, "--workdir", str(work)])
    print(f"all benchmarks done in {time.time() - started:.0f} s: bench/results.md")


if __name__ == "__main__":
    main()
