"""CPU per message of the ingest path before the store: decode, select, map, ACK.

    PYTHONPATH=$PWD python bench/bench_mapping.py [--rounds 7] [--profile] [--dump FILE]

Runs, in process and without a store, what the processor does for each message before its
store trip (`Processor._prepare` and the AA): `decode` -> `Message` -> the duplicate-check
keys -> `select_profile` -> `apply_profile` with the trace the processor keeps -> the
warning tally -> the completeness check of each order -> `build_ack`, encoded. Two sets:

- `ingest`: the ORM^O01 messages bench/bench_ingest.py sends (tests/orders.py `orm`);
- `corpus`: the published messages of /work/shared/corpus/hl7 (orders, ADT, broken ones),
  with the shipped profiles (mappings/) and config.yaml.

Prints the median CPU time (process time) per message of each set over `--rounds` rounds;
`--profile` adds cProfile's top functions; `--dump FILE` writes every output (items, trace
text as `translate --trace` shows it, warnings, keys, ERR text, ACK bytes with a fixed
time) so that two versions can be compared with diff. Nothing is asserted: the bridge that
runs is the one on PYTHONPATH (printed first), so old and new can be run in turn.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# tests/ for orders.py and bench/ for bench_ingest; the bridge itself comes from PYTHONPATH.
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

import bridge  # noqa: E402
from bridge import ack as acks  # noqa: E402
from bridge import keys  # noqa: E402
from bridge.completeness import check_order  # noqa: E402
from bridge.config import load_config  # noqa: E402
from bridge.decoding import decode  # noqa: E402
from bridge.lifecycle import Effect, OrderControl  # noqa: E402
from bridge.mapping.dryrun import _trace_lines  # noqa: E402
from bridge.mapping.engine import apply_profile, select_profile  # noqa: E402
from bridge.mapping.loader import load_profiles  # noqa: E402
from bridge.mapping.patient import PatientProfile, apply_patient_profile  # noqa: E402
from bridge.mapping.recurring import WarningTally  # noqa: E402
from bridge.message import Message, named  # noqa: E402

CORPUS = Path("/work/shared/corpus/hl7")


def ingest_messages(n: int) -> list[bytes]:
    import bench_ingest

    return bench_ingest.messages("B", n)


def corpus_messages(folder: Path) -> list[bytes]:
    return [f.read_bytes() for f in sorted(folder.glob("*.hl7"))]


class Ingest:
    """What the processor does with one message before its store trip."""

    def __init__(self, config_file: Path, mappings: Path, trace: bool | str = True):
        self.config = load_config(config_file, environ={})
        self.profiles = load_profiles(mappings)
        self.control = OrderControl(self.config.lifecycle)
        self.tally = WarningTally()
        self.trace = trace  # what the processor asks apply_profile for

    def run(self, raw: bytes, out: list[str] | None = None) -> bytes:
        cfg = self.config.mllp
        try:
            msg = Message(decode(raw, default_charset=cfg.default_charset,
                                 detect_utf8=cfg.detect_utf8))
        except ValueError as exc:  # DecodeError, UnknownCharset: an AR without a message
            if out is not None:
                out.append(f"decode error: {exc}")
            return acks.build_ack("AR", "A1", None, acks.AckError(100, str(exc))).encode()
        header = (keys.sender_key(msg), keys.control_key(msg), msg.message_type,
                  msg.header(9))
        if out is not None:
            out.append(f"header: {header!r}")
        try:
            profile = select_profile(self.profiles, msg)
            if profile.charset:
                msg = Message(decode(raw, override=profile.charset, detect_utf8=False))
            named(msg.segments, profile.group_segment)
            if isinstance(profile, PatientProfile):
                updates = apply_patient_profile(profile, msg)
                if out is not None:
                    out.extend(f"update: {u!r}" for u in updates)
            else:
                mapped = apply_profile(profile, msg, trace=self.trace)
                self.tally.record(mapped)
                sender = msg.header(3)
                for order in mapped.orders:
                    try:
                        action = self.control.action(sender, order.control, order.status)
                    except ValueError as exc:
                        action = None
                        if out is not None:
                            out.append(f"action error: {exc}")
                    gap = None
                    if action is not None and action.effect is Effect.REPLACE and \
                            order.error is None:
                        gap = check_order(profile.attributes, order)
                    if out is not None:
                        out.append(f"order {order.group_index}: {order.key!r} "
                                   f"{order.control!r} {order.status!r} "
                                   f"{order.identifiers!r} error={order.error!r} gap={gap!r}")
                        out.extend(f"  item: {item!r}" for item in order.items)
                        for trace in order.traces:
                            out.extend(f"  {line}" for line in _trace_lines(trace))
                            out.append(f"  keys: {trace.warning_keys()!r}")
                warnings = mapped.specific_warnings
                if out is not None:
                    out.append(f"warnings: {mapped.warnings!r}")
                    out.append(f"specific: {warnings!r}")
        except Exception as exc:  # NoProfile, MappingFieldError: an AE/AR with its text
            if out is not None:
                path = getattr(exc, "path", None)
                out.append(f"error: {type(exc).__name__}: {exc} "
                           f"path={path.text if path else None} "
                           f"where={getattr(exc, 'where', None)} "
                           f"group={getattr(exc, 'group_index', None)}")
            error = acks.AckError(acks.REQUIRED_FIELD_MISSING, str(exc),
                                  acks.ErrorLocation("PID", 3, 1, 1))
            return acks.build_ack("AE", "A1", msg, error).encode(msg.decoded.charset.codec,
                                                                 errors="replace")
        return acks.build_ack("AA", "A1", msg).encode(msg.decoded.charset.codec,
                                                      errors="replace")


def per_message(work: Callable[[], None], count: int, rounds: int) -> list[float]:
    """CPU µs per message of each round."""
    out = []
    for _ in range(rounds):
        start = time.process_time()
        work()
        out.append((time.process_time() - start) / count * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000, help="ingest messages per round")
    parser.add_argument("--corpus-repeat", type=int, default=50,
                        help="times the corpus is run per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--mappings", type=Path, default=ROOT / "mappings")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions")
    parser.add_argument("--dump", type=Path, help="write every output here, for diff")
    parser.add_argument("--trace", choices=("all", "warnings"), default="all",
                        help="the trace asked of apply_profile: all (trace=True, the "
                             "processor today) or warnings (trace='warnings')")
    args = parser.parse_args()
    # The bridge's warnings (a UTF-8 sniff, each recurring mapping warning once) would be
    # printed here; the time to format them is not what this measures.
    logging.disable(logging.WARNING)
    print(f"bridge from {os.path.dirname(bridge.__file__)}")
    path = Ingest(args.config, args.mappings, True if args.trace == "all" else "warnings")
    ingest = ingest_messages(args.orders)
    corpus = corpus_messages(args.corpus)
    fixtures = corpus_messages(ROOT / "tests/fixtures/hl7")

    if args.dump:
        acks._timestamp = lambda: "20240101000000"  # the ACK's only varying field
        lines: list[str] = []
        for name, raws in (("ingest", ingest[:50]), ("corpus", corpus),
                           ("fixtures", fixtures)):
            for i, raw in enumerate(raws):
                lines.append(f"### {name} {i}")
                ack = path.run(raw, lines)
                lines.append(f"ack: {ack!r}")
        args.dump.write_text("\n".join(lines) + "\n")
        print(f"{len(lines)} lines written to {args.dump}")
        return

    sets = {
        "ingest": (lambda: [path.run(r) for r in ingest], len(ingest)),
        "corpus": (lambda: [path.run(r) for _ in range(args.corpus_repeat) for r in corpus],
                   len(corpus) * args.corpus_repeat),
    }
    for work, _ in sets.values():
        work()  # warm up: imports, regex caches
    for name, (work, count) in sets.items():
        times = per_message(work, count, args.rounds)
        print(f"{name}: {count} messages per round, CPU µs/message median "
              f"{statistics.median(times):.1f} (min {min(times):.1f}, max {max(times):.1f}, "
              f"{args.rounds} rounds)")
    if args.profile:
        for name, (work, _) in sets.items():
            prof = cProfile.Profile()
            prof.runcall(work)
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
            print(f"--- cProfile {name}, by own time")
            print("\n".join(text.getvalue().splitlines()[6:36]))


if __name__ == "__main__":
    main()
