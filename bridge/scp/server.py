"""The MWL SCP on pynetdicom: Modality Worklist C-FIND, Verification and MPPS.

Each association runs on its own pynetdicom thread, so several modalities are served at
once; a C-FIND reads the in-memory index (index.py) and never waits on the store. On little
endian transfer syntaxes its pending answers are written to the socket by direct.py (about
a tenth of pynetdicom's CPU per answer, measured); pynetdicom sends the final status. MPPS
status changes go through `on_status`, which commits them to the store (and from there to
the sinks and the index) before the N-CREATE or N-SET response goes out.

No peer can hold the SCP: a C-FIND has a CPU budget (`max_query_seconds`, then A700), a
connection must ask for an association within `acse_timeout`, and one address holds at
most `max_associations_per_peer` connections (`PeerLimit`), so that idle or half-open
connections from a scanner never lock a modality out.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from bridge.config import ScpConfig
from bridge.scp.charset import TEXT_VRS, UnknownCharset, codec_for, transliterate
from bridge.scp.direct import AnswerCache, ResponseWriter, identifier, shape, socket_of
from bridge.scp.encoding import raw_dataset, supported
from bridge.scp.index import Entry, WorklistIndex
from bridge.scp.matching import (
    NUMERIC_VRS,
    SINGLE_VALUED_TEXT,
    Answer,
    MatchOptions,
    matches,
    project,
    projection_complete,
)
from bridge.scp.query import InvalidKey, Query, parse, with_station_filter
from bridge.store import MppsFinal, MppsUnknown

log = logging.getLogger(__name__)

PENDING = 0xFF00
SUCCESS = 0x0000
# What Orthanc answers when it cut the answers at its limit: "matching terminated".
LIMIT_REACHED = 0xFE00
CANCELED = 0xFE00
UNABLE_TO_PROCESS = 0xC001
# PS3.4 K.4.1.1.4: the query's search ran out of its time budget.
OUT_OF_RESOURCES = 0xA700
# PS3.4 K.4.1.1.4: a key the Modality Worklist model does not allow as sent.
IDENTIFIER_DOES_NOT_MATCH = 0xA900
NO_SUCH_INSTANCE = 0x0112
DUPLICATE_INSTANCE = 0x0111
INVALID_ATTRIBUTE_VALUE = 0x0106

PROCESSING_FAILURE = 0x0110


class MppsRecords(Protocol):
    """Where MPPS instances and their items live (the store, see service.py). Called from
    association threads; each call returns once its change is committed."""

    def create(self, uid: str, calling_ae: str, item_keys: list[str],
               attributes: dict) -> bool:
        """A new IN PROGRESS instance performing `item_keys`; False if it exists."""
        ...

    def update(self, uid: str, state: str, modifications: dict) -> None:
        """An N-SET; raises MppsUnknown, or MppsFinal for a COMPLETED/DISCONTINUED one."""
        ...


def quiet_pynetdicom() -> None:
    """pynetdicom logs every DIMSE message through its standard handlers: about 1 ms of CPU
    per C-FIND response against 0.4 ms without. Our own log line per query replaces them."""
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: Nagle's algorithm adds about 40 ms to each C-FIND on small
    DIMSE messages, and pynetdicom leaves it on. Bound on both acceptor and requestor."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class AeSettings:
    """The options in force for one calling AE title."""

    fill_station_ae: bool
    max_answers: int
    visible: frozenset[str]
    charset: str
    match: MatchOptions


def settings_for(config: ScpConfig, calling_ae: str) -> AeSettings:
    wanted = calling_ae.strip().upper()
    over = next((o for name, o in config.calling_aes.items()
                 if name.strip().upper() == wanted), None)

    def pick(name: str):  # the calling AE's value where it sets one, else the default
        value = getattr(over, name, None) if over is not None else None
        return getattr(config, name) if value is None else value

    return AeSettings(
        fill_station_ae=pick("fill_station_ae"),
        max_answers=pick("max_answers"),
        visible=frozenset(s.upper() for s in pick("visible_statuses")),
        charset=pick("response_charset").strip(),
        match=MatchOptions(pn_case_insensitive=pick("pn_case_insensitive")),
    )


def all_visible_statuses(config: ScpConfig) -> set[str]:
    """Every status some calling AE may see: what the index must hold."""
    out = {s.upper() for s in config.visible_statuses}
    for options in config.calling_aes.values():
        out |= {s.upper() for s in options.visible_statuses or []}
    return out


def failure(status: int, comment: str, offending: int | None = None) -> Dataset:
    """A failure status with its Error Comment (LO: at most 64 characters) and, where one
    key is to blame, its Offending Element: what the modality's log can show."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    if offending is not None:
        ds.OffendingElement = [offending]
    return ds


class WorklistScp:
    def __init__(self, config: ScpConfig, index: WorklistIndex,
                 mpps: MppsRecords | None = None,
                 observe: Callable[[float], None] | None = None, log_phi: bool = False):
        self.config = config
        self.index = index
        self.mpps = mpps  # None: MPPS requests fail (no store to keep them in)
        self.observe = observe  # seconds per C-FIND, for the metrics histogram
        self.log_phi = log_phi  # query values in the log line, or only keys
        self._server: ThreadedAssociationServer | None = None
        self.peers = PeerLimit(config.max_associations_per_peer)
        # Pending answers written directly (direct.py) with their identifiers cached;
        # False: every response through pynetdicom (the reference the tests compare with).
        self.direct = True
        self.answers = AnswerCache()

    # --- C-FIND, independent of the network: what a query gets -----------------------------

    def find(self, query: Query, calling_ae: str,
             is_cancelled: Callable[[], bool] = lambda: False, implicit: bool | None = None
             ) -> Iterator[tuple[int, Dataset | None]]:
        """The C-FIND responses to `query`: pending answers, then the final status.
        `implicit`: the association's little endian transfer syntax, when it is one."""
        search = Search(self, query, calling_ae, is_cancelled)
        for entry in search:
            found = project(search.query.keys, entry.data, search.settings.match)
            yield PENDING, response(found, entry.data.get("SpecificCharacterSet", ""),
                                    search.target, implicit)
        search.finish()
        yield search.status, None

    def find_direct(self, query: Query, calling_ae: str, is_cancelled: Callable[[], bool],
                    implicit: bool, writer: ResponseWriter) -> tuple[int, Dataset | None]:
        """The pending answers to `query` written by `writer` (direct.py); returns the
        final status for pynetdicom to send. The same answers as `find`, byte for byte."""
        search = Search(self, query, calling_ae, is_cancelled)
        keys, options, target = search.query.keys, search.settings.match, search.target
        shape_id = self.answers.shape_id(shape(keys))
        for entry in search:
            # An answer is cached, and taken from the cache, only when it leaves no stored
            # sequence item out: which items a query keeps depends on its values, not only
            # on the keys it asks for.
            complete = projection_complete(keys, entry.data, options)
            cache_key = (entry.item_key, shape_id, target, implicit)
            data = self.answers.get(cache_key, entry) if complete else None
            if data is None:
                found = project(keys, entry.data, options)
                data = identifier(found, entry.data.get("SpecificCharacterSet", ""), target,
                                  implicit)
                if complete:
                    self.answers.put(cache_key, entry, data)
            writer.pending(data)
            if writer.failed:
                search.stop()
        writer.flush()
        search.finish()
        return search.status, None

    # --- pynetdicom handlers ---------------------------------------------------------------

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        calling = event.assoc.requestor.ae_title
        try:
            query = parse(event.identifier)
        except InvalidKey as exc:
            # Refused rather than ignored: ignoring the key would answer more than the
            # modality asked for, as if it had asked for everything.
            log.warning("C-FIND from %s refused (A900): %s", calling, exc)
            yield failure(IDENTIFIER_DOES_NOT_MATCH, str(exc), exc.tag), None
            return
        except Exception as exc:  # an identifier we cannot read: fail this query only
            log.warning("C-FIND from %s: unreadable identifier: %s", calling,
                        _cut(str(exc)) if self.log_phi else type(exc).__name__)
            yield UNABLE_TO_PROCESS, None
            return
        syntax = event.context.transfer_syntax
        implicit = syntax.is_implicit_VR if syntax.is_little_endian and \
            not syntax.is_deflated else None
        sock = socket_of(event.assoc)
        if implicit is None or sock is None or not self.direct:
            yield from self.find(query, calling, lambda: event.is_cancelled, implicit)
            return
        writer = ResponseWriter(sock.sendall, event.context.context_id,
                                event.request.MessageID, str(event.request.AffectedSOPClassUID),
                                event.assoc.requestor.maximum_length or 0)
        yield self.find_direct(query, calling, lambda: event.is_cancelled, implicit, writer)

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_n_create(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        attrs = event.attribute_list
        uid = str(event.request.AffectedSOPInstanceUID or "")
        calling = event.assoc.requestor.ae_title.strip()
        state = str(attrs.get("PerformedProcedureStepStatus", "")).strip().upper()
        if state and state != "IN PROGRESS":
            return INVALID_ATTRIBUTE_VALUE, None
        if self.mpps is None:
            return _failure("MPPS is not kept by this SCP"), None
        keys = self._scheduled_items(attrs)
        try:
            created = self.mpps.create(uid, calling, keys, _json(attrs))
        except Exception as exc:  # the store could not commit: the modality retries
            log.error("MPPS N-CREATE %s from %s: not stored: %s", uid, calling,
                      type(exc).__name__)
            return _failure("the instance could not be stored"), None
        if not created:
            return DUPLICATE_INSTANCE, None
        log.info("MPPS N-CREATE %s from %s: IN PROGRESS for %s", uid, calling,
                 ", ".join(keys) or "no scheduled item")
        return SUCCESS, attrs

    def _on_n_set(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        mods = event.modification_list
        uid = str(event.request.RequestedSOPInstanceUID or "")
        state = str(mods.get("PerformedProcedureStepStatus", "")).strip().upper()
        if self.mpps is None:
            return _failure("MPPS is not kept by this SCP"), None
        try:
            self.mpps.update(uid, state, _json(mods))
        except MppsUnknown:
            log.warning("MPPS N-SET for unknown instance %s", uid)
            return NO_SUCH_INSTANCE, None
        except MppsFinal:
            # PS3.4 F.7.2.2: a COMPLETED or DISCONTINUED step may no longer be updated.
            log.warning("MPPS N-SET %s: the instance is final, not updated", uid)
            return _failure("Performed Procedure Step Object may no longer be updated"), None
        except Exception as exc:
            log.error("MPPS N-SET %s: not stored: %s", uid, type(exc).__name__)
            return _failure("the change could not be stored"), None
        log.info("MPPS N-SET %s: %s", uid, state or "(no status change)")
        return SUCCESS, mods

    def _scheduled_items(self, attrs: Dataset) -> list[str]:
        """The worklist items an MPPS performs, from its ScheduledStepAttributesSequence."""
        keys: list[str] = []
        for step in attrs.get("ScheduledStepAttributesSequence", []) or []:
            study = str(step.get("StudyInstanceUID", "") or "").strip()
            accession = str(step.get("AccessionNumber", "") or "").strip()
            rp_id = str(step.get("RequestedProcedureID", "") or "").strip()
            sps_id = str(step.get("ScheduledProcedureStepID", "") or "").strip()
            for key in self.index.scheduled(study, accession, rp_id, sps_id):
                if key not in keys:
                    keys.append(key)
        return keys

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> int:
        quiet_pynetdicom()
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        # pynetdicom's defaults (30 s to associate, 60 s of silence) let a few idle
        # connections hold the association slots for long; ours are configurable.
        ae.acse_timeout = self.config.acse_timeout
        ae.network_timeout = self.config.network_timeout
        ae.add_supported_context(ModalityWorklistInformationFind)
        ae.add_supported_context(Verification)
        ae.add_supported_context(ModalityPerformedProcedureStep)
        if self.config.allowed_calling_aes:
            ae.require_calling_aet = [a.strip() for a in self.config.allowed_calling_aes]
        handlers = [(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_C_FIND, self._on_find),
                    (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_N_CREATE, self._on_n_create),
                    (evt.EVT_N_SET, self._on_n_set)]
        # make_server's server_class is pynetdicom's way to a custom server: ours checks
        # each connection against the per-address limit before pynetdicom takes it on.
        server = ae.make_server((self.config.host, self.config.port), evt_handlers=handlers,
                                server_class=_LimitedServer, peers=self.peers)
        # What start_server(block=False) does with its own server; shutdown() takes the
        # server off the AE's list again.
        ae._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, name="MwlScpServer",
                                  daemon=True)
        thread.start()
        self._server = server
        port = server.server_address[1]
        log.info("MWL SCP %s listening on %s:%d", self.config.ae_title, self.config.host, port)
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _failure(comment: str) -> Dataset:
    status = Dataset()
    status.Status = PROCESSING_FAILURE
    status.ErrorComment = comment[:64]
    return status


def _json(ds: Dataset) -> dict:
    """An MPPS dataset as DICOM JSON for the store; what pydicom cannot encode is left out
    (the status change does not depend on it)."""
    try:
        return ds.to_json_dict()
    except Exception:
        out = {}
        for elem in ds:
            try:
                out.update(Dataset([elem]).to_json_dict())  # type: ignore[list-item]
            except Exception:
                log.warning("MPPS: attribute %s left out of the stored instance", elem.tag)
        return out


class Search:
    """One C-FIND's search: iterating gives the matching entries, in the index's order, up
    to the calling AE's limit, a cancel or the CPU budget; `finish` then sets `status`,
    observes the time and writes the query's log line."""

    def __init__(self, scp: WorklistScp, query: Query, calling_ae: str,
                 is_cancelled: Callable[[], bool]):
        self.scp = scp
        self.calling_ae = calling_ae
        self.is_cancelled = is_cancelled
        self.started = time.perf_counter()
        self.settings = settings_for(scp.config, calling_ae)
        if self.settings.fill_station_ae and calling_ae.strip():
            query = with_station_filter(query, calling_ae)
        self.query = query
        target = self.settings.charset
        if target == "query":
            # Answer in the set the modality wrote its query in, when it names one.
            target = query.charset if query.charset and supported(query.charset) else ""
        self.target = target
        self.sent = 0
        self.status: int | Dataset = SUCCESS
        self.ending = ""
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def __iter__(self) -> Iterator[Entry]:
        settings, keys = self.settings, self.query.keys
        # CPU time of this thread spent searching, not the time spent building and
        # sending the answers between two matches: the budget bounds the search.
        budget = self.scp.config.max_query_seconds
        spent = 0.0
        resumed = time.thread_time()
        for n, entry in enumerate(self.scp.index.candidates(keys)):
            # Every 16th candidate: reading the thread's clock costs about as much as
            # matching a simple query against one item.
            if n % 16 == 0 and spent + time.thread_time() - resumed > budget:
                self.status = failure(OUT_OF_RESOURCES, "query exceeded the SCP's time "
                                      "limit (scp.max_query_seconds)")
                self.ending = " (time limit reached: A700)"
                return
            if entry.status not in settings.visible:
                continue
            if not matches(keys, entry.data, settings.match):
                continue
            if settings.max_answers and self.sent >= settings.max_answers:
                self.status, self.ending = LIMIT_REACHED, " (limit reached)"
                return
            if self.is_cancelled():
                self.status, self.ending = CANCELED, " (canceled)"
                return
            self.sent += 1
            spent += time.thread_time() - resumed
            yield entry
            resumed = time.thread_time()
            if self._stopped:
                return

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.started
        if self.scp.observe is not None:
            self.scp.observe(elapsed)
        if self.scp.config.log_queries:
            log.info("C-FIND from %s: %s -> %d answer(s)%s in %.1f ms",
                     self.calling_ae.strip(), self.query.describe(self.scp.log_phi),
                     self.sent, self.ending, elapsed * 1000)


class PeerLimit:
    """The connections each peer address holds, counted from accept to close; one over
    `per_peer` is closed at once, before pynetdicom starts an association (and two
    threads) for it.

    Idle connections cannot be told from a modality's until they send an A-ASSOCIATE-RQ;
    what keeps them from locking others out: a scanner's connections count against its
    own address only, and `acse_timeout` ends each one that does not ask for an
    association. Refused connections leave no thread behind; evicting idle ones instead
    would not, as pynetdicom's thread waits out `acse_timeout` either way.
    """

    LOG_EVERY = 10.0  # seconds between log lines about refused connections

    def __init__(self, per_peer: int):
        self.per_peer = per_peer
        self._lock = threading.Lock()
        # Each accepted socket and its peer address; a closed or collected socket no
        # longer counts (pynetdicom closes it when the association ends).
        self._open: weakref.WeakKeyDictionary[socket.socket, str] = \
            weakref.WeakKeyDictionary()
        self._refused = 0
        self._last_log = -self.LOG_EVERY

    def admit(self, sock: socket.socket, address: str) -> bool:
        """From the accepting thread, before pynetdicom sees the connection."""
        with self._lock:
            if self._count(address) >= self.per_peer:
                self._note_refused(address)
                return False
            self._open[sock] = address
            return True

    def open_connections(self, address: str) -> int:
        with self._lock:
            return self._count(address)

    def _count(self, address: str) -> int:
        count = 0
        for sock, a in list(self._open.items()):
            if sock.fileno() == -1:
                del self._open[sock]
            elif a == address:
                count += 1
        return count

    def _note_refused(self, address: str) -> None:
        # One line per LOG_EVERY seconds with a count, not one per connection of a flood.
        self._refused += 1
        now = time.monotonic()
        if now - self._last_log >= self.LOG_EVERY:
            log.warning("MWL SCP refused %d connection(s) over scp.max_associations_per_peer "
                        "(%d), the last from %s", self._refused, self.per_peer, address)
            self._refused = 0
            self._last_log = now


class _LimitedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with each connection checked by `PeerLimit`."""

    # socketserver's listen backlog, 5 by default: a burst of connections (a scanner)
    # filled it, and a modality's connect then waited for a SYN retry (1 s and more).
    request_queue_size = 128

    def __init__(self, *args, peers: PeerLimit, **kwargs):
        self.peers = peers
        super().__init__(*args, **kwargs)

    def verify_request(self, request, client_address) -> bool:
        # socketserver's hook, called on accept: False closes the connection unread.
        return self.peers.admit(request, str(client_address[0]))


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def response(found: Answer, item_charset: str, target_charset: str,
             implicit: bool | None = None) -> Dataset:
    """The answer as a dataset, in the target character set (transliterated) or in the
    item's own; always with SpecificCharacterSet. With `implicit` (the association's little
    endian transfer syntax) the values are encoded here, once (encoding.py)."""
    found, charset, codec = answer_charset(found, item_charset, target_charset)
    if implicit is not None and codec is not None and supported(charset):
        return raw_dataset(found, charset, codec, implicit)
    ds = Dataset()
    _fill(ds, found)
    ds.add(DataElement(0x00080005, "CS", charset.split("\\") if "\\" in charset
                       else (charset or None), validation_mode=_NO_VALIDATION))
    return ds


# The values come from the store as they were accepted; validating them again for every
# answer costs a third of the time spent building it.
_NO_VALIDATION = pydicom_config.IGNORE


def answer_charset(found: Answer, item_charset: str, target_charset: str
                   ) -> tuple[Answer, str, str | None]:
    """The answer fitted to its character set, that set, and its codec (None: ISO 2022 code
    extensions, which only pydicom encodes)."""
    charset = target_charset or item_charset or ""
    # Text the answer's character set cannot hold is transliterated: always for a target
    # set, and for an item whose text does not fit its own declared set (a mislabelled
    # feed). No single codec for ISO 2022 code extensions: pydicom encodes those.
    try:
        codec = codec_for(charset) if charset and "\\" not in charset else None
    except UnknownCharset:
        codec = None
    found, non_ascii = _fit(found, codec)
    if not charset:
        # Unicode text with no declared set: say it is UTF-8 rather than send bytes
        # nobody declared; plain ASCII needs no declaration.
        charset, codec = ("ISO_IR 192", "UTF8") if non_ascii else ("", "ascii")
    return found, charset, codec


def _fit(found: Answer, codec: str | None) -> tuple[Answer, bool]:
    """The answer with its text transliterated where `codec` cannot hold it, and whether
    any text is still outside ASCII."""
    out: Answer = {}
    non_ascii = False
    for tag, (vr, value) in found.items():
        if vr == "SQ":
            items = []
            for sub in value:  # type: ignore[union-attr]
                fitted, sub_non_ascii = _fit(sub, codec)
                items.append(fitted)
                non_ascii = non_ascii or sub_non_ascii
            out[tag] = (vr, items)
            continue
        text = str(value)
        if vr in TEXT_VRS and not text.isascii():
            if codec is not None:
                text = transliterate(text, codec)
            non_ascii = non_ascii or not text.isascii()
        out[tag] = (vr, text)
    return out, non_ascii


def _fill(ds: Dataset, found: Answer) -> None:
    for tag, (vr, value) in sorted(found.items()):
        if tag == 0x00080005:
            continue
        if vr == "SQ":
            items = []
            for sub in value:  # type: ignore[union-attr]
                item = Dataset()
                _fill(item, sub)
                items.append(item)
            ds.add(DataElement(tag, "SQ", Sequence(items), validation_mode=_NO_VALIDATION))
            continue
        text = str(value)
        ds.add(DataElement(tag, vr, _element_value(vr, text), validation_mode=_NO_VALIDATION))


def _element_value(vr: str, text: str) -> object:
    if not text:
        return None
    if vr in NUMERIC_VRS and vr not in ("DS", "IS"):
        try:
            values = [float(v) if vr in ("FL", "FD") else int(v) for v in text.split("\\")]
        except ValueError:
            return None  # a stored value that is not a number: answer it empty
        return values[0] if len(values) == 1 else values
    if "\\" in text and vr not in SINGLE_VALUED_TEXT:
        return text.split("\\")
    return text
