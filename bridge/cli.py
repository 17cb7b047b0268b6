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


def _import_wl(args: argparse.Namespace) -> int:
    from bridge.app import build_sinks
    from bridge.scp.importing import read_folder
    from bridge.store import Store

    if not args.folder.is_dir():
        print(f"import-wl: {args.folder} is not a folder", file=sys.stderr)
        return 2
    config = load_config(args.config)
    result = read_folder(args.folder)
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    store = Store(config.store_path, [s.name for s in build_sinks(config)])
    try:
        store.put_items(result.writes)
    finally:
        store.close()
    print(f"imported {len(result.writes)} item(s) from {args.folder} into "
          f"{config.store_path}; {len(result.skipped)} file(s) skipped")
    return 1 if result.skipped else 0


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

    p = sub.add_parser("import-wl", help="load .wl files (a wlmscpfs or Orthanc worklist "
                       "folder) into the store; run it before `serve`")
    p.add_argument("folder", type=Path, help="folder with .wl files (searched recursively)")
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="configuration file (default: ./config.yaml)")
    p.set_defaults(func=_import_wl)
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
