"""Median time to translate one ORM^O01 (decode, parse, select the profile, map).

    python bench/bench_translate.py [MESSAGE.hl7] [--mappings DIR] [--runs N]

Prints the median and 95th percentile over N runs of the whole in-process path the bridge
takes for a message before the store: `decode` -> `Message` -> `select_profile` ->
`apply_profile` (with the trace the processor keeps). Target: under 1 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.decoding import decode  # noqa: E402
from bridge.mapping.engine import apply_profile, select_profile  # noqa: E402
from bridge.mapping.loader import load_profiles  # noqa: E402
from bridge.message import Message  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("message", type=Path, nargs="?",
                        default=ROOT / "tests/fixtures/hl7/dcm4che__ORM_O01_v231_2019.hl7")
    parser.add_argument("--mappings", type=Path, default=ROOT / "mappings")
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()
    profiles = load_profiles(args.mappings)
    raw = args.message.read_bytes()

    def translate() -> int:
        msg = Message(decode(raw))
        mapped = apply_profile(select_profile(profiles, msg), msg, trace=True)
        return sum(len(o.items) for o in mapped.orders)

    items = translate()
    for _ in range(200):  # warm up
        translate()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        translate()
        times.append(time.perf_counter() - start)
    times.sort()
    median = statistics.median(times) * 1000
    p95 = times[int(len(times) * 0.95)] * 1000
    print(f"{args.message.name}: {items} item(s), {len(profiles)} profiles loaded, "
          f"{args.runs} runs")
    print(f"translate median {median:.3f} ms, p95 {p95:.3f} ms (target < 1 ms)")


if __name__ == "__main__":
    main()
