"""The command line: ``hl7-worklist-bridge <command>`` (also ``python -m bridge``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bridge import __version__, logprivacy
from bridge.config import (
    PACKAGED_CONFIG,
    Config,
    ConfigError,
    find_config,
    load_config,
    load_packaged_config,
)
from bridge.mapping.loader import MappingError
from bridge.message import Separators

_ERL = Separators()  # ERR-2 style locations in `validate` output: PID^1^3
log = logging.getLogger("bridge.cli")


def _config(args: argparse.Namespace) -> Config:
    """--config, else ./config.yaml, else the packaged defaults (data in a user folder)."""
    path = find_config(args.config)
    return load_config(path) if path is not None else load_packaged_config()


def _setup_logging(config: Config) -> None:
    logprivacy.configure(logprivacy.LogSettings(config.log_level, config.log_phi,
                                                config.log_max_line))


def _serve(args: argparse.Namespace) -> int:
    from bridge.app import serve

    config = _config(args)
    _setup_logging(config)
    if find_config(args.config) is None:
        log.info("no --config and no ./config.yaml: running on the packaged defaults "
                 "(%s), data in %s", PACKAGED_CONFIG, config.data_dir)
    asyncio.run(serve(config))
    return 0


def _init(args: argparse.Namespace) -> int:
    """Write a starter config.yaml and the shipped mappings into a folder."""
    import shutil

    target: Path = args.folder
    config, mappings = target / "config.yaml", target / "mappings"
    source = PACKAGED_CONFIG.parent / "mappings"
    existing = [p for p in (config, mappings) if p.exists()]
    if existing and not args.force:
        print(f"init: {', '.join(map(str, existing))} already there "
              "(--force overwrites them)", file=sys.stderr)
        return 2
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGED_CONFIG, config)
    # Profiles, their lookup tables and the outbound profiles' subfolder, as shipped.
    shutil.copytree(source, mappings, dirs_exist_ok=True,
                    ignore=lambda folder, names: [n for n in names if n.startswith(".")
                                                  or n == "__pycache__"])
    print(f"wrote {config} and {mappings}/; start with:\n"
          f"  hl7-worklist-bridge serve --config {config}")
    return 0


def _send(args: argparse.Namespace) -> int:
    from bridge.client import ack_code, read_messages, send_messages

    ssl = None
    if args.tls or args.tls_ca or args.tls_cert:
        from bridge.tls import client_context

        ssl = client_context(args.tls_ca, args.tls_cert, args.tls_key)
    try:
        messages = read_messages(args.files)
    except OSError as exc:
        print(f"send: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(send_messages(messages, args.host, args.port, args.timeout, ssl))
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


def _journal(args: argparse.Namespace) -> int:
    from bridge import operations as ops

    config = _config(args)
    if args.action == "replay":
        _setup_logging(config)
        if not args.ids and not args.failed:
            print("journal replay: give journal IDs or --failed", file=sys.stderr)
            return 2
        ids = list(args.ids)
        if args.failed:
            with ops.open_store(config) as store:
                ids += [e.id for e in store.journal_since(0, "failed", limit=100_000)]
        results = ops.run_replay(config, ids)
        for journal_id, code, error in results:
            print(f"{journal_id}: {code}" + (f" ({error})" if error else ""))
        return 0 if all(code == "AA" for _, code, _ in results) else 1
    with ops.open_store(config) as store:
        if args.action == "show":
            status = 0
            for journal_id in args.ids:
                entry = store.journal_entry(journal_id)
                if entry is None:
                    print(f"journal {journal_id}: no such entry", file=sys.stderr)
                    status = 1
                else:
                    print(ops.journal_show(entry))
            return status
        since = ops.parse_since(args.since) if args.since else 0.0
        # The newest first: with a long journal, the last messages are the ones asked about.
        entries = store.journal_since(since, "failed" if args.failed else None, args.limit,
                                      newest_first=True)
        print(ops.journal_json(entries) if args.json else "\n".join(ops.journal_lines(entries)))
    return 0


def _worklist(args: argparse.Namespace) -> int:
    from bridge import operations as ops

    config = _config(args)
    with ops.open_store(config) as store:
        if args.action == "list":
            print(ops.worklist_json(store, args.all) if args.json
                  else "\n".join(ops.worklist_lines(store, args.all)))
            return 0
        if not args.keys:
            print(f"worklist {args.action}: give one or more item keys", file=sys.stderr)
            return 2
        status = 0
        for key in args.keys:
            if args.action == "show":
                text = ops.worklist_show(store, key)
            else:
                text = f"{key}: taken off the worklist" if ops.worklist_delete(store, key) \
                    else None
            if text is None:
                print(f"{key}: no such item", file=sys.stderr)
                status = 1
            else:
                print(text)
        return status


def _user(args: argparse.Namespace) -> int:
    import getpass

    from bridge import operations as ops
    from bridge import users
    from bridge.store import open_store, store_url

    config = load_config(args.config)

    def password() -> str:  # the first line of stdin, or asked twice on a terminal
        if args.password_stdin or not sys.stdin.isatty():
            return sys.stdin.readline().rstrip("\r\n")
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise users.UserError("the passwords differ")
        return first

    config.store_path.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(store_url(config), ops.sink_names(config))  # created if new
    try:
        if args.action == "list":
            for u in store.users():
                print(f"{u.name}\t{u.role}")
            return 0
        if not args.name:
            print(f"user {args.action}: give a user name", file=sys.stderr)
            return 2
        if args.action == "add":
            users.add(store, args.name, args.role, password())
            print(f"user {args.name} added ({args.role})")
        elif args.action == "passwd":
            users.set_password(store, args.name, password())
            print(f"password of {args.name} changed")
        elif not users.delete(store, args.name):
            print(f"no user {args.name}", file=sys.stderr)
            return 1
        else:
            print(f"user {args.name} deleted")
        return 0
    except users.UserError as exc:
        print(f"user {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="configuration file (default: ./config.yaml if there is one, else "
                        "the packaged defaults)")


def _mapping_profiles(args: argparse.Namespace) -> tuple[list, str, bool]:
    """The profiles `translate` uses: --mapping files, else those of --config (or
    ./config.yaml), else ./mappings; with the config's charset defaults."""
    from bridge.mapping.loader import load_files, load_profiles

    if args.mapping:
        return load_files(args.mapping), "8859/1", True
    config_path = find_config(args.config)
    if config_path is None:
        folder = Path("mappings") if Path("mappings").is_dir() else \
            PACKAGED_CONFIG.parent / "mappings"
        return load_profiles(folder), "8859/1", True
    config = load_config(config_path)
    return (load_profiles(config.mappings.dir), config.mllp.default_charset,
            config.mllp.detect_utf8)


def _translate(args: argparse.Namespace) -> int:
    from bridge.mapping import dryrun

    logging.basicConfig(level=logging.ERROR)
    profiles, default_charset, detect_utf8 = _mapping_profiles(args)
    try:
        raw = args.message.read_bytes()
    except OSError as exc:
        print(f"translate: cannot read {args.message}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        run = dryrun.translate(raw, profiles, default_charset=default_charset,
                               detect_utf8=detect_utf8)
    except dryrun.MessageError as exc:
        print(f"{args.message}: {exc}", file=sys.stderr)
        return 2
    # Items on stdout (pipe-able JSON); what happened and why on stderr.
    print(dryrun.as_json(run) if args.format == "json" else dryrun.as_dump(run))
    print(dryrun.report(run, str(args.message), args.trace), file=sys.stderr)
    return 2 if run.failed else 0


def _check_mapping(args: argparse.Namespace) -> int:
    from bridge.mapping.dryrun import check_report
    from bridge.mapping.loader import load_files

    profiles = load_files(args.files)  # MappingError: main() prints it, exit 1
    print("\n".join(check_report(profiles)))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from bridge.client import split_messages
    from bridge.validate import check_bytes, warm_up

    try:
        warm_up()  # a missing hl7apy is a clear message here, not a traceback later
    except ConfigError:
        print("validate needs hl7apy, a dependency of hl7-worklist-bridge that is not "
              "installed here: pip install hl7apy", file=sys.stderr)
        return 2

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


def _resync(args: argparse.Namespace) -> int:
    from bridge.resync import ResyncError, resync

    config = _config(args)
    _setup_logging(config)
    try:
        results = asyncio.run(resync(config, args.sink, deliver=not args.no_deliver))
    except ResyncError as exc:
        print(f"resync: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(result.summary())
    return 1 if any(r.pending for r in results) else 0


def _import_wl(args: argparse.Namespace) -> int:
    from bridge.operations import sink_names
    from bridge.scp.importing import read_folder
    from bridge.store import open_store, store_url

    if not args.folder.is_dir():
        print(f"import-wl: {args.folder} is not a folder", file=sys.stderr)
        return 2
    config = _config(args)
    _setup_logging(config)
    result = read_folder(args.folder)
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    store = open_store(store_url(config), sink_names(config))
    try:
        store.write_items(result.writes)
    finally:
        store.close()
    print(f"imported {len(result.writes)} item(s) from {args.folder} into "
          f"{config.store_path}; {len(result.skipped)} file(s) skipped")
    return 1 if result.skipped else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hl7-worklist-bridge",
        description="HL7 v2 imaging orders to DICOM Modality Worklist items.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the bridge")
    _add_config(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("init", help="write a starter config.yaml and the shipped mappings "
                                    "into a folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--force", action="store_true",
                   help="overwrite config.yaml and the shipped mapping files")
    p.set_defaults(func=_init)

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

    p = sub.add_parser("journal", help="inspect and replay the message journal")
    p.add_argument("action", choices=["list", "show", "replay"])
    p.add_argument("ids", type=int, nargs="*", help="journal IDs (show, replay)")
    p.add_argument("--failed", action="store_true", help="only failed messages")
    p.add_argument("--since", help="list from: an ISO date/time, or 30m, 12h, 7d ago")
    p.add_argument("--limit", type=int, default=1000, help="at most this many, the newest")
    p.add_argument("--json", action="store_true", help="list as JSON")
    _add_config(p)
    p.set_defaults(func=_journal)

    p = sub.add_parser("worklist", help="list, show or delete worklist items")
    p.add_argument("action", choices=["list", "show", "delete"])
    p.add_argument("keys", nargs="*", help="item keys (show, delete)")
    p.add_argument("--all", action="store_true", help="list items off the worklist too")
    p.add_argument("--json", action="store_true", help="list as JSON, with each dataset")
    _add_config(p)
    p.set_defaults(func=_worklist)

    from bridge.outbound import commands as outbound  # status to the RIS

    outbound.add_parser(sub)

    p = sub.add_parser("translate", help="dry run: map one HL7 message and print the items")
    p.add_argument("message", type=Path, help="a file with one HL7 message")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="use the mappings of this configuration")
    source.add_argument("--mapping", type=Path, action="append",
                        help="use this mapping file (repeatable)")
    p.add_argument("--format", choices=("json", "dump"), default="json",
                   help="DICOM JSON (PS3.18 F.2) or a dcmdump-like listing")
    p.add_argument("--trace", action="store_true",
                   help="show, per attribute, the HL7 path and transforms (on stderr)")
    p.set_defaults(func=_translate)

    p = sub.add_parser("check-mapping", help="validate mapping files, report file:line:col")
    p.add_argument("files", type=Path, nargs="+")
    p.set_defaults(func=_check_mapping)

    p = sub.add_parser("validate", help="check messages against their HL7 version's "
                       "structure (segment order, cardinality, required fields)")
    p.add_argument("files", type=Path, nargs="+", help="files with one or more messages")
    p.add_argument("--default-charset", default="8859/1",
                   help="HL7 character set when MSH-18 is empty (default 8859/1)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("resync", help="make the sinks (Orthanc, the .wl folder) match the "
                                      "store; run it with the bridge stopped")
    _add_config(p)
    p.add_argument("--sink", choices=["orthanc", "folder"], action="append",
                   help="only this sink (repeatable; default: every enabled sink)")
    p.add_argument("--no-deliver", action="store_true",
                   help="only delete extra items and queue the rest: for a running bridge, "
                        "whose outbox then delivers them")
    p.set_defaults(func=_resync)

    p = sub.add_parser("import-wl", help="load .wl files (a wlmscpfs or Orthanc worklist "
                       "folder) into the store")
    p.add_argument("folder", type=Path, help="folder with .wl files (searched recursively)")
    _add_config(p)
    p.set_defaults(func=_import_wl)

    p = sub.add_parser("user", help="console and API users: add, list, delete, passwd")
    p.add_argument("action", choices=["add", "list", "delete", "passwd"])
    p.add_argument("name", nargs="?")
    p.add_argument("--role", choices=["viewer", "operator", "admin"], default="viewer")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin")
    _add_config(p)
    p.set_defaults(func=_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        # One line per problem, each naming its key (or file:line).
        for line in str(exc).splitlines():
            print(f"configuration error: {line}", file=sys.stderr)
        return 2
    except MappingError as exc:
        for line in str(exc).splitlines():  # file:line:col: what is wrong
            print(f"mapping error: {line}", file=sys.stderr)
        return 1 if args.command in ("translate", "check-mapping") else 2
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
