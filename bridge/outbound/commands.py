"""`hl7-worklist-bridge outbound list|show|replay|preview`: the RIS messages in the store.

Like `journal` and `worklist`, these open the store directly and work whether the bridge
runs or not; a running bridge sends replayed messages at its next poll (about a second).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.config import load_config
from bridge.operations import when_text
from bridge.store import OutboundRow, Store, open_store, store_url

EVENTS = {"IN_PROGRESS": "in_progress", "COMPLETED": "completed",
          "DISCONTINUED": "discontinued"}


def lines(rows: list[OutboundRow]) -> list[str]:
    out = [f"{'ID':>7}  {'queued':19}  {'state':7}  {'event':12}  {'try':>3}  {'ack':3}  "
           f"{'control id':20}  {'order':24}  error"]
    for r in rows:
        out.append(f"{r.id:>7}  {when_text(r.created_at)}  {r.state:7}  {r.event:12}  "
                   f"{r.attempts:>3}  {r.ack_code or '':3}  {(r.control_id or '')[:20]:20}  "
                   f"{r.order_key[:24]:24}  {(r.error or '')[:100]}")
    return out


def show(row: OutboundRow) -> str:
    message = (row.message or b"").decode("latin-1").replace("\r", "\n").rstrip("\n")
    return "\n".join([
        f"outbound {row.id}: {row.state}, {row.event} of MPPS {row.mpps_uid}, to "
        f"{row.destination}, queued {when_text(row.created_at)}, sent {when_text(row.sent_at)}",
        f"order {row.order_key}; items {', '.join(row.item_keys)}",
        f"attempts {row.attempts}; ACK {row.ack_code or '-'}; error: {row.error or '-'}",
        "--- message (as sent; built at the first attempt) ---", message or "(not built yet)",
    ])


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.store.url and not config.store_path.exists():
        print(f"no store at {config.store_path} (has the bridge run yet?)", file=sys.stderr)
        return 2
    store = open_store(store_url(config))
    try:
        if args.action == "list":
            state = "dead" if args.dead else ("pending" if args.pending else None)
            print("\n".join(lines(store.outbound_entries(state, args.limit))))
            return 0
        if args.action == "show":
            status = 0
            for row_id in args.ids:
                row = store.outbound_entry(int(row_id))
                if row is None:
                    print(f"outbound {row_id}: no such message", file=sys.stderr)
                    status = 1
                else:
                    print(show(row))
            return status
        if args.action == "replay":
            ids = [int(i) for i in args.ids]
            if args.dead:
                ids += [r.id for r in store.outbound_entries("dead", 100_000)]
            if not ids:
                print("outbound replay: give message IDs or --dead", file=sys.stderr)
                return 2
            replayed = store.outbound_replay(ids)
            for row_id in ids:
                print(f"{row_id}: " + ("pending again (rebuilt at its next attempt)"
                                       if row_id in replayed else "not dead, left alone"))
            return 0 if len(replayed) == len(set(ids)) else 1
        return _preview(args, config, store)
    finally:
        store.close()


def _preview(args: argparse.Namespace, config, store: Store) -> int:
    from bridge.outbound.builder import BuildError, build, gather
    from bridge.outbound.profile import load_outbound, profile_file

    if len(args.ids) != 1:
        print("outbound preview: give one item key", file=sys.stderr)
        return 2
    key = args.ids[0]
    item = store.item(key)
    if item is None:
        print(f"{key}: no such item", file=sys.stderr)
        return 2
    profile = load_outbound(profile_file(args.profile or config.ris.profile,
                                         config.mappings.dir))
    uids = [args.mpps] if args.mpps else store.mpps_of_item(key)[-1:]
    mpps = store.mpps(uids[0]) if uids else None
    event = EVENTS[args.state]
    rule = getattr(config.ris, event)
    try:
        order_event = gather(store, item.order_key, [key], event,
                             mpps.uid if mpps else "", mpps.attributes if mpps else {},
                             rule.control, rule.status)
        built = build(profile, config.ris, order_event, "PREVIEW")
    except BuildError as exc:
        print(f"outbound preview: {exc}", file=sys.stderr)
        return 1
    print(built.text.replace("\r", "\n").rstrip("\n"))
    print(f"# profile {profile.name} ({profile.file}); event {event}; MPPS "
          f"{mpps.uid if mpps else '(none: no MPPS values)'}"
          + ("" if rule.send else f"; ris.{event}.send is false: nothing would be sent"),
          file=sys.stderr)
    if args.trace:
        print("\n".join(built.trace), file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("outbound", help="status messages to the RIS: list, show, replay "
                                        "refused ones, preview one")
    p.add_argument("action", choices=["list", "show", "replay", "preview"])
    p.add_argument("ids", nargs="*", help="message IDs (show, replay); an item key (preview)")
    p.add_argument("--dead", action="store_true", help="list or replay the refused ones")
    p.add_argument("--pending", action="store_true", help="list the ones not sent yet")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--state", choices=sorted(EVENTS), default="COMPLETED",
                   type=lambda s: s.strip().upper().replace(" ", "_"),
                   help="preview: the MPPS state to send (default COMPLETED)")
    p.add_argument("--mpps", help="preview: the MPPS instance UID (default: the item's last)")
    p.add_argument("--profile", help="preview: an outbound profile name or file "
                                     "(default: ris.profile)")
    p.add_argument("--trace", action="store_true",
                   help="preview: where each field came from (on stderr)")
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="configuration file (default: ./config.yaml)")
    p.set_defaults(func=_run)
