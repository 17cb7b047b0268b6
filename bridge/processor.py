"""One inbound message, from raw bytes to the ACK: journal, decode, map, commit, answer.

The listener calls `Processor.handle` for every MLLP frame and sends what it returns.
Nothing here raises: every failure becomes an AE or AR with an ERR segment, and the raw
message stays in the journal with its error so it can be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bridge import ack as acks
from bridge import keys
from bridge.ack import AckError, ErrorLocation
from bridge.completeness import check_order
from bridge.config import Config
from bridge.decoding import DecodeError, UnknownCharset, decode, peek_control_id
from bridge.lifecycle import (
    MOVE_EVENTS,
    NEW_CODES,
    Action,
    Effect,
    OrderControl,
    UnknownOrderControl,
    decide,
    patient_writes,
)
from bridge.logprivacy import exception_text
from bridge.mapping.engine import (
    MappedMessage,
    MappedOrder,
    NoProfile,
    apply_profile,
    select_profile,
)
from bridge.mapping.loader import Profile
from bridge.mapping.patient import PatientProfile, PatientUpdate, apply_patient_profile
from bridge.mapping.recurring import WarningTally
from bridge.mapping.rules import MappingFieldError
from bridge.message import Message, named
from bridge.store import (
    AsyncStore,
    Duplicate,
    ItemWrite,
    OrderLookup,
    Stale,
    StorageFull,
    StoredItem,
    StoreUnavailable,
)
from bridge.validate import strict_for, structure_error

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What `handle` did: the ACK to send and, for the logs and tests, why."""

    ack: bytes
    code: str  # AA, AE, AR
    journal_id: int
    error: str | None = None
    writes: list[ItemWrite] = field(default_factory=list)


def _accessions(order: MappedOrder) -> list[str]:
    found = dict.fromkeys(str(i.get("AccessionNumber") or "") for i in order.items)
    return [a for a in found if a]


def _lookup(order: MappedOrder) -> OrderLookup:
    """How the store finds the order: by its identifiers; by accession only for a message
    about an existing order (orders may share an accession, so a new one never merges)."""
    new = order.control.strip().upper() in NEW_CODES
    return OrderLookup(order.key, order.identifiers, [] if new else _accessions(order))


STORAGE_FULL = "storage full: the message was not stored, send it again later"
UNAVAILABLE = "store unavailable: the message was not stored, send it again later"


def _not_stored_text(exc: StorageFull) -> str:
    return UNAVAILABLE if isinstance(exc, StoreUnavailable) else STORAGE_FULL


class Rejection(Exception):
    def __init__(self, code: str, error: AckError, msg: Message | None = None):
        super().__init__(error.text)
        self.code = code
        self.error = error
        self.msg = msg  # the message as far as it could be read, for the ACK's header


# Messages from this size, or with this many segments, are decoded and mapped on a worker
# thread, so that other senders' ACKs do not wait for them. Below, the work (about 0.3 ms
# for a one-order ORM) costs less than the hand-off (about 0.15 ms more) and stays inline.
OFFLOAD_BYTES = 16_384
OFFLOAD_SEGMENTS = 32


class Pacer:
    """Called after each group mapped on a worker thread: every few milliseconds of work it
    sleeps a moment, which hands the GIL to the event loop and the store's thread. Without
    it they wait up to the interpreter's switch interval (5 ms) for each of their many GIL
    hand-offs, and another sender's ACK took up to 0.4 s behind a big message instead of a
    few milliseconds."""

    def __init__(self, every: float = 0.005, pause: float = 0.0005):
        self.every = every
        self.pause = pause
        self.last = time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self.last >= self.every:
            time.sleep(self.pause)
            self.last = time.perf_counter()


@dataclass
class Prepared:
    """A message decoded and mapped, not yet checked against the store."""

    msg: Message
    profile: Profile
    mapped: MappedMessage | None = None  # order profiles
    updates: list[PatientUpdate] | None = None  # patient profiles


class Processor:
    def __init__(self, config: Config, profiles: list[Profile], store: AsyncStore,
                 on_commit: Callable[[Sequence[ItemWrite]], None] = lambda writes: None):
        self.config = config
        self.profiles = profiles
        self.store = store
        self.control = OrderControl(config.lifecycle)
        self.warnings = WarningTally()  # recurring mapping warnings, counted (app.py wires it)
        # Called after each commit with the item writes: wakes the outbox workers and keeps
        # in-process views (the SCP's index) current.
        self.on_commit = on_commit

    async def handle(self, raw: bytes, peer: str, journal_id: int | None = None) -> Outcome:
        """`journal_id`: a message journaled before (a replay), whose entry is updated."""
        header: dict[str, str | None] = {}
        cfg = self.config.mllp
        offload = (len(raw) >= OFFLOAD_BYTES or cfg.strict or cfg.strict_senders
                   or raw.count(b"\r") + raw.count(b"\n") >= OFFLOAD_SEGMENTS)
        prepared: Prepared | None = None
        if journal_id is None and not offload:
            # One trip to the store's thread: the journal entry (committed first), then the
            # decoding, the mapping and the commit there (_ingest). Two trips cost each order
            # two wake-ups of each thread (issue 13).
            read: list[Prepared] = []
            try:
                done = await self.store.run_journaled(raw, peer, self._ingest, raw, header,
                                                      read)
            except StorageFull as exc:
                return self._not_stored(raw, peer, exc)
            journal_id = done.journal_id
            if isinstance(done.error, Stale):
                pass  # planned on items another instance changed meanwhile: plan again below
            elif done.error is not None:
                return await self._failed(done.error, journal_id, header,
                                          read[0].msg if read else None, raw)
            elif done.value is not None:
                previous, writes, ack = done.value
                if previous is not None:
                    return await self._duplicate(journal_id, header, previous)
                self.on_commit(writes)
                return Outcome(ack, "AA", journal_id, writes=writes)
            prepared = read[0] if read else None  # a patient message: its plan is made here
        if journal_id is None:
            try:
                journal_id = await self.store.run(self.store.store.journal_received, raw, peer)
            except StorageFull as exc:
                return self._not_stored(raw, peer, exc)
        msg: Message | None = None
        try:
            if prepared is not None:
                pass
            elif offload:
                # CPU work (and hl7apy's tables) off the event loop: see OFFLOAD_BYTES.
                prepared = await asyncio.to_thread(self._prepare, raw, header, Pacer())
            else:
                prepared = self._prepare(raw, header)
            msg, profile = prepared.msg, prepared.profile
            patients: dict[str, list[StoredItem]] | None = None  # an ADT's, as planned on
            if isinstance(profile, PatientProfile):
                previous = await self._previous(header)
                if previous is not None:
                    return await self._duplicate(journal_id, header, previous)
                writes, patients = await self._patient_writes(msg, profile,
                                                              prepared.updates or [])
                ack = self._encode(acks.build_ack("AA", f"A{journal_id}", msg), msg)
            # The store refuses a plan made on items another connection or instance changed
            # meanwhile (Stale): plan again from what is stored now.
            for attempt in range(1, 11):
                try:
                    if prepared.mapped is not None:
                        previous, writes, ack = await self.store.run(
                            self._commit_order, journal_id, header, prepared)
                        if previous is not None:
                            return await self._duplicate(journal_id, header, previous)
                        break
                    if attempt > 1:
                        assert isinstance(profile, PatientProfile)
                        writes, patients = await self._patient_writes(msg, profile,
                                                                      prepared.updates or [])
                    await self.store.run(self.store.store.commit_message, journal_id, header,
                                         writes, "AA", ack, None, [], None, None, patients)
                    break
                except Stale:
                    if attempt == 10:
                        raise
            self.on_commit(writes)
            return Outcome(ack, "AA", journal_id, writes=writes)
        except Exception as exc:
            return await self._failed(exc, journal_id, header, msg, raw)

    def _ingest(self, journal_id: int, raw: bytes, header: dict[str, str | None],
                read: list[Prepared]
                ) -> tuple[tuple[str, bytes] | None, list[ItemWrite], bytes] | None:
        """On the store's thread, the message journaled (AsyncStore.run_journaled): decode,
        map and commit an order message; returns (the earlier ACK of a duplicate, the writes
        made, the AA). A patient message is only decoded and mapped (None): the event loop
        plans it on its patients' items. What could be read of the message goes in `read`,
        for the ACK of an error."""
        prepared = self._prepare(raw, header)
        read.append(prepared)
        if prepared.mapped is None:
            return None
        return self._commit_order(journal_id, header, prepared)

    def _commit_order(self, journal_id: int, header: dict[str, str | None],
                      prepared: Prepared
                      ) -> tuple[tuple[str, bytes] | None, list[ItemWrite], bytes]:
        """On the store's thread, for a mapped order message: its AA, then one store call
        for the duplicate check, the orders' items, the plan made on them and the commit.
        Returns (the earlier ACK of a duplicate, the writes made, the AA)."""
        msg, mapped = prepared.msg, prepared.mapped
        assert mapped is not None
        ack = self._encode(acks.build_ack("AA", f"A{journal_id}", msg), msg)
        previous, writes = self.store.store.commit_planned(
            journal_id, header, [_lookup(o) for o in mapped.orders],
            functools.partial(self._plan, msg, mapped), ack)
        return previous, writes, ack

    async def _failed(self, exc: BaseException, journal_id: int,
                      header: dict[str, str | None], msg: Message | None,
                      raw: bytes) -> Outcome:
        """The ACK for a message that could not be committed, and its journal entry."""
        if isinstance(exc, Rejection):
            # A message accepted before gets its first ACK again, even if it would fail now
            # (a mapping changed since): the duplicate rule comes first.
            previous = await self._previous(header)
            if previous is not None:
                return await self._duplicate(journal_id, header, previous)
            return await self._fail(journal_id, header, msg or exc.msg, exc.code, exc.error,
                                    raw=raw)
        if isinstance(exc, Duplicate):  # the same message committed at the same moment
            return await self._duplicate(journal_id, header, exc.previous)
        if isinstance(exc, StorageFull):
            return await self._fail(journal_id, header, msg, "AE", AckError(
                acks.APPLICATION_INTERNAL_ERROR, _not_stored_text(exc)), raw=raw)
        # A bug must cost one AE, not the connection.
        log.error("journal %d: internal error", journal_id, exc_info=exc)
        err = AckError(acks.APPLICATION_INTERNAL_ERROR, f"internal error: {exc}")
        return await self._fail(journal_id, header, msg, "AE", err, log_text="internal "
                                f"error: {exception_text(exc, self.config.log_phi)}", raw=raw)

    async def _previous(self, header: dict[str, str | None]) -> tuple[str, bytes] | None:
        if not header.get("control_id"):
            return None
        return await self.store.run(self.store.store.previous_ack, header["sender"],
                                    header["control_id"])

    async def _duplicate(self, journal_id: int, header: dict[str, str | None],
                         previous: tuple[str, bytes]) -> Outcome:
        code, ack = previous
        await self.store.run(self.store.store.journal_duplicate, journal_id, header, code, ack)
        log.info("journal %d: duplicate of %s control ID %s, same ACK sent again",
                 journal_id, header["sender"], header["control_id"])
        return Outcome(ack, code, journal_id)

    async def oversized(self, peer: str, limit: int, head: bytes = b"") -> Outcome:
        """A frame over the size limit: its bytes are gone, the journal says so. `head`, the
        frame's first bytes, gives the ACK its MSA-2 when MSH-10 is among them."""
        journal_id = await self.store.run(self.store.store.journal_received, b"", peer)
        err = AckError(acks.SEGMENT_SEQUENCE_ERROR,
                       f"message larger than the {limit}-byte limit, discarded")
        return await self._fail(journal_id, {}, None, "AR", err, raw=head)

    def _prepare(self, raw: bytes, header: dict[str, str | None],
                 pace: Callable[[], None] | None = None) -> Prepared:
        """Decode, check the structure and map: CPU only, safe on a worker thread."""
        msg = self._decode(raw, header)
        try:
            cfg = self.config.mllp
            if len(msg.segments) > cfg.max_segments:
                extra = msg.segments[cfg.max_segments]
                raise Rejection("AR", AckError(
                    acks.SEGMENT_SEQUENCE_ERROR, f"{len(msg.segments)} segments, more than "
                    f"mllp.max_segments ({cfg.max_segments})",
                    ErrorLocation(extra.name, 0, extra.sequence)))
            if strict_for(cfg, msg):
                error = structure_error(msg)
                if error is not None:
                    raise Rejection("AR", error)
            profile = self._select(msg, header)
            if profile.charset:
                msg = Message(decode(raw, override=profile.charset, detect_utf8=False))
            groups = named(msg.segments, profile.group_segment)
            if len(groups) > cfg.max_groups:
                extra = groups[cfg.max_groups]
                raise Rejection("AR", AckError(
                    acks.SEGMENT_SEQUENCE_ERROR, f"{len(groups)} {profile.group_segment} "
                    f"groups, more than mllp.max_groups ({cfg.max_groups})",
                    ErrorLocation(extra.name, 0, extra.sequence)))
            if isinstance(profile, PatientProfile):
                try:
                    updates = apply_patient_profile(profile, msg, pace)
                except MappingFieldError as exc:
                    raise self._field_rejection(exc, msg, profile.group_segment) from exc
                return Prepared(msg, profile, updates=updates)
            return Prepared(msg, profile, mapped=self._map(msg, profile, pace))
        except Rejection as rej:
            failure = Rejection(rej.code, rej.error, rej.msg or msg)
        # Raised outside the handler, without its cause: the traceback of the original holds
        # the whole mapping (10,000 groups: a million objects), which is freed here, on this
        # thread, rather than on the event loop that receives the exception.
        raise failure

    def _decode(self, raw: bytes, header: dict[str, str | None]) -> Message:
        cfg = self.config.mllp
        try:
            decoded = decode(raw, default_charset=cfg.default_charset,
                             detect_utf8=cfg.detect_utf8)
        except DecodeError as exc:
            raise Rejection("AR", AckError(acks.SEGMENT_SEQUENCE_ERROR, str(exc),
                                           ErrorLocation("MSH", 1))) from exc
        except UnknownCharset as exc:
            raise Rejection("AR", AckError(
                acks.TABLE_VALUE_NOT_FOUND, f"unknown character set {exc} in MSH-18",
                ErrorLocation("MSH", 18))) from exc
        msg = Message(decoded)
        # Whole fields, escaped for the key: no two senders or control IDs share a key.
        header.update(sender=keys.sender_key(msg), control_id=keys.control_key(msg),
                      message_type=msg.message_type)
        if not msg.header(9):
            raise Rejection("AR", AckError(acks.REQUIRED_FIELD_MISSING,
                                           "MSH-9 (message type) is empty",
                                           ErrorLocation("MSH", 9)), msg)
        return msg

    def _select(self, msg: Message, header: dict[str, str | None]) -> Profile:
        try:
            profile = select_profile(self.profiles, msg)
        except NoProfile as exc:
            code = acks.UNSUPPORTED_MESSAGE_TYPE
            if any(msg.header(9) in [t.split("^")[0] for t in p.match.message_types]
                   for p in self.profiles):
                code = acks.UNSUPPORTED_EVENT_CODE
            raise Rejection("AR", AckError(code, str(exc), ErrorLocation("MSH", 9))) from exc
        header["profile"] = profile.name
        return profile

    def _map(self, msg: Message, profile: Profile,
             pace: Callable[[], None] | None = None) -> MappedMessage:
        try:
            mapped = apply_profile(profile, msg, trace="warnings", pause=pace)
        except MappingFieldError as exc:
            raise self._field_rejection(exc, msg, profile.group_segment,
                                        exc.group_index) from exc
        self.warnings.record(mapped)
        if not mapped.orders:
            raise Rejection("AE", AckError(
                acks.SEGMENT_SEQUENCE_ERROR,
                f"no {profile.group_segment} segment: the message carries no order",
                ErrorLocation(profile.group_segment, 1)))
        # Everything that can reject the message is checked here, before the store.
        sender = msg.header(3)
        for order in mapped.orders:
            action = self._action(sender, order)
            if action.effect is Effect.REPLACE and order.error is not None:
                raise self._field_rejection(order.error, msg, profile.group_segment,
                                            order.group_index)
            # An item wlmscpfs or Orthanc would skip is never AA'd silently (completeness.py).
            if action.effect is Effect.REPLACE and \
                    (gap := check_order(profile.attributes, order)) is not None:
                raise self._field_rejection(gap, msg, profile.group_segment, order.group_index)
        return mapped

    def _action(self, sender: str, order: MappedOrder) -> Action:
        try:
            return self.control.action(sender, order.control, order.status)
        except UnknownOrderControl as exc:
            # HL7 table 0119 has no such order control: a table value, not a missing field.
            raise Rejection("AE", AckError(acks.TABLE_VALUE_NOT_FOUND, str(exc),
                                           ErrorLocation("ORC", 1, order.group_index))) from exc

    def _plan(self, msg: Message, mapped: MappedMessage, existing: dict[str, list[StoredItem]]
              ) -> tuple[list[ItemWrite], list[str], list[tuple[str, str, str]]]:
        """The item writes for a mapped message, given the stored items of its orders; the
        notes for the journal; the orders' identifiers (order key, kind, value) to keep."""
        charset = msg.decoded.charset.dicom
        sender = msg.header(3)
        rules = self.control.rules(sender)
        writes: list[ItemWrite] = []
        notes = list(mapped.specific_warnings)  # recurring ones are counted (recurring.py)
        identifiers: list[tuple[str, str, str]] = []
        for order in mapped.orders:
            action = self._action(sender, order)
            for item in order.items:
                if charset:
                    item["SpecificCharacterSet"] = charset
            current = existing.get(order.key, [])
            control = order.control.strip().upper()
            if current:
                order.key = current[0].order_key  # found by another of its identifiers
            elif action.effect is Effect.STATUS or \
                    not self.control.creates_unknown(sender, order.control):
                text = f"no such order {order.key}: {control} not applied"
                if action.effect is Effect.REPLACE or rules.status_unknown == "reject":
                    raise Rejection("AE", AckError(acks.UNKNOWN_KEY_IDENTIFIER, text,
                                                   ErrorLocation("ORC", 2, order.group_index)))
                notes.append(text)
                continue
            # A UID found in the message's text came from it; any other was derived.
            from_message = [str(i.get("StudyInstanceUID", "")) in msg.decoded.text
                            for i in order.items]
            decision = decide(order, current, action, self.control.visible, from_message,
                              rules.reopen_final)
            writes.extend(decision.writes)
            notes.extend(decision.notes)
            identifiers.extend((order.key, kind, value) for kind, value in order.identifiers)
            identifiers.extend((order.key, "accession", a) for a in _accessions(order))
        return writes, notes, identifiers

    async def _patient_writes(self, msg: Message, profile: PatientProfile,
                              updates: list[PatientUpdate]
                              ) -> tuple[list[ItemWrite], dict[str, list[StoredItem]]]:
        """The writes of an ADT message, planned on its patients' items as read in one
        trip to the store, and those items (the commit refuses the plan, Stale, when another
        message or instance changed them meanwhile)."""
        event = msg.header(9, 2)
        if not updates:
            raise Rejection("AE", AckError(
                acks.SEGMENT_SEQUENCE_ERROR, f"no {profile.group_segment} segment: the message "
                "names no patient", ErrorLocation(profile.group_segment, 1)))
        charset = msg.decoded.charset.dicom
        for update in updates:
            if event in MOVE_EVENTS and not update.prior_id:
                path = profile.prior_id.sources[0] if profile.prior_id.sources else None
                raise self._field_rejection(MappingFieldError(
                    f"{event} needs the prior patient ID, but "
                    f"{path.text if path else 'patient.prior_id'} is empty", path,
                    "patient.prior_id"), msg, profile.group_segment, update.group_index)
            if charset and update.attributes:
                update.attributes["SpecificCharacterSet"] = charset

        def whose(update: PatientUpdate) -> str:
            return update.prior_id if event in MOVE_EVENTS else update.patient_id

        # The merge's target too: its lock keeps a concurrent update of it out.
        names = {whose(u) for u in updates} | {u.patient_id for u in updates}
        state = await self.store.run(self.store.store.patients_state, sorted(names))
        writes: list[ItemWrite] = []
        for update in updates:
            writes.extend(patient_writes(event, update.patient_id, update.attributes,
                                         state[whose(update)],
                                         self.control.visible,
                                         self.config.lifecycle.arrive_on_a10))
        return writes, state

    @staticmethod
    def _field_rejection(exc: MappingFieldError, msg: Message | None = None,
                         group_segment: str = "", group_index: int | None = None) -> Rejection:
        loc = None
        if exc.path is not None:
            # ERR-2.2 names the occurrence the rule read: the second group's OBR is OBR^2.
            seg = msg.locate(exc.path, group_segment, group_index or 0) if msg else None
            loc = ErrorLocation(exc.path.segment, exc.path.field, seg.sequence if seg else 1,
                                component=exc.path.component,
                                subcomponent=exc.path.subcomponent)
        return Rejection("AE", AckError(acks.REQUIRED_FIELD_MISSING, str(exc), loc), msg)

    def _encode(self, text: str, msg: Message | None) -> bytes:
        # Latin-1 when the message could not be read: echoed bytes (MSH-10) go back as they came.
        codec = msg.decoded.charset.codec if msg is not None else "latin-1"
        return text.encode(codec, errors="replace")

    async def _fail(self, journal_id: int, header: dict[str, str | None], msg: Message | None,
                    code: str, error: AckError, log_text: str | None = None,
                    raw: bytes = b"") -> Outcome:
        control_id = peek_control_id(raw) if msg is None else ""
        ack = self._encode(acks.build_ack(code, f"A{journal_id}", msg, error, control_id), msg)
        where = f" at {error.location}" if error.location else ""
        log.warning("journal %d: %s %s%s: %s", journal_id, code, error.code, where,
                    log_text or error.text)
        try:
            await self.store.run(self.store.store.journal_failed, journal_id, header, code, ack,
                                 f"{error.code}{where}: {error.text}")
        except StorageFull:
            log.warning("journal %d: storage full, the failure is not recorded", journal_id)
        except Exception:
            log.exception("journal %d: could not record the failure", journal_id)
        return Outcome(ack, code, journal_id, error=error.text)

    def _not_stored(self, raw: bytes, peer: str, exc: StorageFull) -> Outcome:
        """The store cannot even journal the message: AE, so the sender keeps it and
        sends it again; MSA-2 still echoes its MSH-10 when that can be read."""
        msg = None
        with contextlib.suppress(Exception):
            msg = self._decode(raw, {})
        error = AckError(acks.APPLICATION_INTERNAL_ERROR, _not_stored_text(exc))
        ack = self._encode(acks.build_ack("AE", "A0", msg, error), msg)
        log.warning("%s: a message from %s was not stored, AE sent",
                    error.text.split(":")[0], peer)
        return Outcome(ack, "AE", 0, error=error.text)
