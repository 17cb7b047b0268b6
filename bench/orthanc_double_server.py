"""The Orthanc `/worklists` test double (tests/orthanc_double.py) as a process of its own,
for bench_orthanc_sink.py.

    python bench/orthanc_double_server.py PORT ARRIVALS

Appends a line "<CLOCK_MONOTONIC seconds> <AccessionNumber>" to ARRIVALS as each PUT stores
an item, and on SIGTERM a last line "# requests N busy S cpu S": how many requests it
answered, the seconds its handlers spent on them (from the parsed request to the sent
answer) and its process CPU. The bench reports those so that the double's own latency is
set aside: a real Orthanc answers at its own speed, which the bridge does not control.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from orthanc_double import OrthancDouble  # noqa: E402


def main() -> None:
    port, arrivals = int(sys.argv[1]), Path(sys.argv[2])
    out = arrivals.open("a", buffering=1)  # a line at a time: the bench reads as it goes
    write_lock = threading.Lock()
    busy = [0, 0.0]  # requests, seconds

    def stored(worklist_id: str, tags: dict) -> None:
        with write_lock:
            out.write(f"{time.monotonic():.6f} {tags.get('AccessionNumber', '')}\n")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with OrthancDouble(port) as double:
        double.on_store = stored
        handle = double._handle

        def timed(h, method: str) -> None:
            t0 = time.monotonic()
            handle(h, method)
            with write_lock:
                busy[0] += 1
                busy[1] += time.monotonic() - t0

        double._handle = timed  # type: ignore[method-assign]
        stop.wait()
    with write_lock:
        out.write(f"# requests {busy[0]} busy {busy[1]:.3f} cpu {time.process_time():.3f}\n")
    out.close()


if __name__ == "__main__":
    main()
