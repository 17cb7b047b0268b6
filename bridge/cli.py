"""The command line: ``hl7-worklist-bridge <command>`` (also ``python -m bridge``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bridge.config import ConfigError, load_config
from bridge.mapping.loader import MappingError


def _serve(args: argparse.Namespace) -> int:
    from bridge.app import serve

    config = load_config(args.config)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config))
    return 0


def _send(args: argparse.Namespace) -> int:
    from bridge.client import ack_code, send_files

    try:
        results = asyncio.run(send_files(args.files, args.host, args.port, args.timeout))
    except (OSError, TimeoutError) as exc:
        print(f"send: cannot reach {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    worst = 0
    for file, ack in results:
        code = ack_code(ack)
        print(f"# {file}: {code}")
        print(ack.decode("utf-8", "replace").replace("\r", "\n").rstrip("\n"))
        if code not in ("AA", "CA"):
            worst = 1
    return worst


def _resync(args: argparse.Namespace) -> int:
    from bridge.resync import ResyncError, resync

    config = load_config(args.config)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        results = asyncio.run(resync(config, args.sink, deliver=not args.no_deliver))
    except ResyncError as exc:
        print(f"resync: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(result.summary())
    return 1 if any(r.pending for r in results) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hl7-worklist-bridge",
        description="HL7 v2 imaging orders to DICOM Modality Worklist items.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the bridge")
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="configuration file (default: ./config.yaml)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("send", help="send HL7 files over MLLP and print each ACK")
    p.add_argument("files", type=Path, nargs="+", help="files with one or more messages")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an ACK")
    p.set_defaults(func=_send)

    p = sub.add_parser("resync", help="make the sinks (Orthanc, the .wl folder) match the "
                                      "store; run it with the bridge stopped")
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="configuration file (default: ./config.yaml)")
    p.add_argument("--sink", choices=["orthanc", "folder"], action="append",
                   help="only this sink (repeatable; default: every enabled sink)")
    p.add_argument("--no-deliver", action="store_true",
                   help="only delete extra items and queue the rest: for a running bridge, "
                        "whose outbox then delivers them")
    p.set_defaults(func=_resync)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except MappingError as exc:
        print(f"mapping error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
