"""The command line: ``hl7-worklist-bridge <command>`` (also ``python -m bridge``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bridge import logprivacy
from bridge.config import ConfigError, load_config
from bridge.mapping.loader import MappingError
from bridge.message import Separators

_ERL = Separators()  # ERR-2 style locations in `validate` output: PID^1^3


def _serve(args: argparse.Namespace) -> int:
    from bridge.app import serve

    config = load_config(args.config)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logprivacy.install(config.log_phi)
    asyncio.run(serve(config))
    return 0


def _send(args: argparse.Namespace) -> int:
    from bridge.client import ack_code, send_files

    ssl = None
    if args.tls or args.tls_ca or args.tls_cert:
        from bridge.tls import client_context

        ssl = client_context(args.tls_ca, args.tls_cert, args.tls_key)
    try:
        results = asyncio.run(send_files(args.files, args.host, args.port, args.timeout, ssl))
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


def _validate(args: argparse.Namespace) -> int:
    from bridge.client import split_messages
    from bridge.validate import check_bytes, warm_up

    warm_up()  # a missing hl7apy is a clear message here, not a traceback later

    problems = 0
    for file in args.files:
        try:
            messages = split_messages(file.read_bytes())
        except OSError as exc:
            print(f"{file}: cannot read: {exc.strerror}", file=sys.stderr)
            problems += 1
            continue
        for index, raw in enumerate(messages, start=1):
            name = f"{file}#{index}" if len(messages) > 1 else str(file)
            report = check_bytes(raw, args.default_charset)
            print(f"{name}: {report.structure or 'no structure'}: "
                  f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}")
            for problem in report.problems:
                print(f"  {problem.location.render(_ERL)}  {problem}  [HL7 0357 {problem.code}]")
            problems += len(report.problems)
    return 1 if problems else 0


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
    p.add_argument("--tls", action="store_true", help="MLLP over TLS")
    p.add_argument("--tls-ca", type=Path, help="CA file to check the listener's certificate")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM) to present")
    p.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    p.set_defaults(func=_send)

    p = sub.add_parser("validate", help="check messages against their HL7 version's "
                       "structure (segment order, cardinality, required fields)")
    p.add_argument("files", type=Path, nargs="+", help="files with one or more messages")
    p.add_argument("--default-charset", default="8859/1",
                   help="HL7 character set when MSH-18 is empty (default 8859/1)")
    p.set_defaults(func=_validate)
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
