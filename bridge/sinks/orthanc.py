"""The Orthanc sink: worklist items in the `/worklists` REST API of Orthanc's worklists plugin.

Every item has a fixed ID, ``<id_prefix><UUID5 of its item key>``, so ``PUT /worklists/{id}``
(an upsert, see ../shared/orthanc-worklists-api/06) creates or replaces it and a retry never
makes a duplicate; ``DELETE /worklists/{id}`` removes it, and 404 means it is gone already.

Orthanc also removes items by itself (DeleteWorklistsOnStableStudy: the study arrived). The
store remembers which items this sink has delivered; before replacing a delivered item the
sink asks Orthanc for it, and "Worklist not found" then means Orthanc removed it: the item
is recorded as removed by the sink and never sent again, by a retry, an update or a resync.

The puts, which every new or changed item makes, are sent by the sink's own process
(worker.py), a batch at a time with up to `parallel_requests` in flight, so that their CPU
does not hold the bridge's GIL against the listener. The bridge keeps what the store knows
(which items were delivered, which Orthanc removed) and records the outcomes. Removals,
listings and resync's deletions are rare and go from the bridge.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridge.config import OrthancSinkConfig
from bridge.mapping.transforms import derived_uid
from bridge.sinks import SinkUnavailable
from bridge.sinks.worker import Worker
from bridge.store import AsyncStore, StoredItem
from bridge.tls import client_context

log = logging.getLogger(__name__)

# Fixed forever: worklist IDs derive from it, and changing it would orphan every item a
# running site has in Orthanc.
ID_NAMESPACE = uuid.UUID("6f0b6d2c-3c55-4f7e-9a51-2a1f2b7d9c40")

# The JSON body is Unicode text, so the item goes to Orthanc as UTF-8 whatever charset the
# HL7 message came in: lossless, and Orthanc transcodes C-FIND answers to its own
# DefaultEncoding anyway (../shared/orthanc-worklists-api/12-cfind-character-set.txt).
CHARSET = "ISO_IR 192"

# What Orthanc's worklists plugin answers for an ID it does not hold (recording 05, 08).
# A 404 without it comes from something else (no plugin, a proxy) and proves nothing.
NOT_FOUND_DETAILS = "Worklist not found"

# A reverse proxy answers these while Orthanc behind it is down.
_PROXY_DOWN = {502, 503, 504}


class OrthancError(Exception):
    """Orthanc refused one request (400 bad body, 500 unknown tag...): the item's failure."""

    def __init__(self, method: str, path: str, status: int, body: dict):
        what = " ".join(str(body[k]) for k in ("Message", "Details") if body.get(k))
        super().__init__(f"{method} {path}: HTTP {status}{': ' + what if what else ''}")
        self.method = method
        self.path = path
        self.status = status
        self.body = body

    def __reduce__(self) -> tuple:
        # It comes back from the delivery process pickled: rebuilt from its own fields.
        return (OrthancError, (self.method, self.path, self.status, self.body))


@dataclass
class RemoteItem:
    id: str
    tags: dict


def tags_for(item: StoredItem) -> dict:
    """The item's dataset as Orthanc's "Tags": DICOM keywords, sequences as lists of
    objects, several values in one string separated by backslashes, PN as ``Family^Given``.

    StudyInstanceUID is always sent (Orthanc makes up a new one on each PUT otherwise),
    derived from the item key when the mapping gave none, so it never changes between PUTs.
    """
    tags = {k: _value(v) for k, v in item.dataset.items()}
    tags["SpecificCharacterSet"] = CHARSET
    if not tags.get("StudyInstanceUID"):
        tags["StudyInstanceUID"] = derived_uid(f"study|{item.item_key}")
    return tags


def _value(value: object) -> object:
    if isinstance(value, list):
        return [{k: _value(v) for k, v in entry.items()} for entry in value]
    return "" if value is None else str(value)


# Orthanc closes a connection idle for 1 s ("Keep-Alive: timeout=1", recording 06): reusing
# one that old races with its close.
KEEPALIVE_SECONDS = 0.5


@dataclass
class Response:
    status: int
    path: str
    body: bytes
    method: str

    def json(self) -> dict:
        """The body as a JSON object ({} when it is none)."""
        try:
            body = json.loads(self.body)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}


class OrthancClient:
    """The four calls of Orthanc's /worklists API the sink needs, with errors sorted into
    "Orthanc is unreachable" (SinkUnavailable) and "Orthanc refused this" (OrthancError).

    Blocking, on the standard library's http.client, with its kept-alive connections shared
    by the threads that call it (the delivery process makes `parallel_requests` calls at
    once; the bridge calls it from a worker thread). Not httpx, which this sink used before:
    a PUT cost 0.67 ms of CPU through httpx's AsyncClient and 0.44 ms through its Client,
    against 0.11 ms here (the /worklists test double, 2,000 PUTs one after another); with
    httpx the delivery process fell 2.4 s behind a 10,000-order burst, with http.client it
    keeps up (bench/bench_orthanc_sink.py).
    """

    def __init__(self, cfg: OrthancSinkConfig):
        url = urlsplit(cfg.url.rstrip("/"))
        self._https = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if self._https else 80)
        self._base = url.path  # an Orthanc behind a proxy: https://proxy/orthanc
        self._headers = {"Content-Type": "application/json", **cfg.headers}
        if cfg.token:
            self._headers["Authorization"] = f"Bearer {cfg.token}"
        if cfg.username:
            basic = f"{cfg.username}:{cfg.password or ''}".encode()
            self._headers["Authorization"] = f"Basic {base64.b64encode(basic).decode()}"
        self._tls: ssl.SSLContext | None = None
        if self._https:
            self._tls = client_context(cfg.ca_bundle, check_hostname=cfg.verify_tls)
            if not cfg.verify_tls:
                self._tls.verify_mode = ssl.CERT_NONE
        self._connect_timeout = cfg.connect_timeout
        self._timeout = cfg.timeout
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def put(self, worklist_id: str, tags: dict) -> None:
        # Force: the bridge's mapping decides what an item needs, not the plugin's checks.
        r = self._request("PUT", f"/worklists/{worklist_id}", {"Tags": tags, "Force": True})
        if r.status == 404:
            raise SinkUnavailable(f"PUT {r.path}: HTTP 404: no /worklists API "
                                  "here (is Orthanc's worklists plugin enabled?)")
        self._check(r)

    def get(self, worklist_id: str) -> dict | None:
        """The item's Tags, or None when Orthanc's plugin says it holds no such item."""
        r = self._request("GET", f"/worklists/{worklist_id}")
        if r.status == 404:
            if r.json().get("Details") == NOT_FOUND_DETAILS:
                return None
            raise SinkUnavailable(f"GET {r.path}: HTTP 404 without "
                                  f"{NOT_FOUND_DETAILS!r}: is the worklists plugin enabled?")
        self._check(r)
        return r.json().get("Tags", {})

    def delete(self, worklist_id: str) -> bool:
        """True when Orthanc removed the item now, False when it was not there."""
        r = self._request("DELETE", f"/worklists/{worklist_id}")
        if r.status == 404:
            return False
        self._check(r)
        return True

    def list(self) -> list[RemoteItem]:
        r = self._request("GET", "/worklists")
        self._check(r)
        try:
            body = json.loads(r.body)
        except ValueError as exc:
            raise SinkUnavailable(f"GET {r.path}: not JSON: {exc}") from exc
        return [RemoteItem(str(e["ID"]), e.get("Tags", {})) for e in body]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def _request(self, method: str, path: str, body: dict | None = None) -> Response:
        path = self._base + path
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                if conn.sock is None:
                    conn.connect()
                    conn.sock.settimeout(self._timeout)  # connected: now the request's limit
                conn.request(method, path, body=data, headers=self._headers)
                answer = conn.getresponse()
                r = Response(answer.status, path, answer.read(), method)
            except (ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 1:
                    # A kept-alive connection closed by Orthanc as we sent on it: every call
                    # here is idempotent, so once more on a new connection.
                    continue
                raise SinkUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                # Refused, timed out, TLS refused, garbage: nothing about the item, so the
                # sink waits.
                conn.close()
                raise SinkUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if answer.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle.append((conn, time.monotonic()))
            break
        if r.status in (401, 403):
            raise SinkUnavailable(f"{method} {path}: HTTP {r.status}: authentication "
                                  "refused (sinks.orthanc username/password/token/headers)")
        if r.status in _PROXY_DOWN:
            raise SinkUnavailable(f"{method} {path}: HTTP {r.status} from a proxy")
        return r

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """A kept-alive connection young enough to reuse, or a new one (not connected)."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn, since = self._idle.pop()
                if now - since < KEEPALIVE_SECONDS:
                    return conn, True
                conn.close()
        if self._tls is not None:
            return http.client.HTTPSConnection(self._host, self._port, context=self._tls,
                                               timeout=self._connect_timeout), False
        return http.client.HTTPConnection(self._host, self._port,
                                          timeout=self._connect_timeout), False

    @staticmethod
    def _check(r: Response) -> None:
        if 200 <= r.status < 300:
            return
        raise OrthancError(r.method, r.path, r.status, r.json())


class OrthancSink:
    name = "orthanc"
    # One Orthanc for the cluster: each change is delivered by one instance (outbox leases).
    shared = True
    # The outbox hands this sink items with their datasets as stored JSON text: the
    # delivery process decodes them (see worker.py).
    takes_json = True

    def __init__(self, cfg: OrthancSinkConfig, store: AsyncStore):
        self.cfg = cfg
        self.store = store
        # Puts go through the delivery process (worker.py); removals, listings and resync's
        # deletions, which are rare, through this client.
        self.client = OrthancClient(cfg)
        self._worker = Worker(self.name)

    def remote_id(self, item_key: str) -> str:
        return f"{self.cfg.id_prefix}{uuid.uuid5(ID_NAMESPACE, item_key)}"

    def owns(self, worklist_id: str) -> bool:
        """Whether an ID in Orthanc follows this bridge's scheme (resync may delete it)."""
        if not worklist_id.startswith(self.cfg.id_prefix):
            return False
        try:
            return uuid.UUID(worklist_id[len(self.cfg.id_prefix):]).version == 5
        except ValueError:
            return False

    async def put(self, item: StoredItem) -> None:
        await self.put_many([item])

    async def put_many(self, items: list[StoredItem]) -> None:
        """Create or replace several items: their states read in one trip to the store, the
        requests made by the delivery process with up to `parallel_requests` in flight, the
        new deliveries recorded in one commit. One request at a time in the bridge's own
        process, a 10,000-order burst reached Orthanc 6 s after its last ACK
        (bench/bench_orthanc_sink.py).

        Raises the first item's error once every request has ended (the outbox then tries
        the batch's items one by one, so each error is charged to its own item); once
        Orthanc is unreachable, the requests not yet sent are not sent."""
        db = self.store.store
        states = await self.store.run(db.sink_states, self.name, [i.item_key for i in items])
        puts: list[Put] = []
        for item in items:
            state = states.get(item.item_key)
            if state is not None and state.removed_at is not None:
                log.debug("orthanc: %s stays removed (Orthanc removed it)", item.item_key)
                continue
            puts.append(Put(self.remote_id(item.item_key), item,
                            check=state is not None and state.delivered))
        outcomes = await self._worker.run(_deliver_in_process, self.cfg, puts) if puts else []
        delivered, errors = [], []
        for put, outcome in zip(puts, outcomes, strict=True):
            if isinstance(outcome, Exception):
                errors.append(outcome)
            elif outcome == GONE:
                await self.store.run(db.sink_removed, self.name, put.item.item_key, put.rid)
                log.info("orthanc: %s (worklist %s) was removed by Orthanc itself (its "
                         "study arrived?): not recreating it", put.item.item_key, put.rid)
            elif outcome == PUT and not put.check:
                delivered.append((put.item.item_key, put.rid))
        if delivered:
            await self.store.run(db.sink_delivered_many, self.name, delivered)
        if errors:
            raise errors[0]

    async def remove(self, item: StoredItem) -> None:
        db = self.store.store
        rid = self.remote_id(item.item_key)
        await asyncio.to_thread(self.client.delete, rid)
        state = await self.store.run(db.sink_state, self.name, item.item_key)
        if state is not None and state.delivered:
            # Gone because we removed it: a later put must create it, not think Orthanc did.
            await self.store.run(db.sink_delivered, self.name, item.item_key, rid, False)

    async def resync(self) -> ResyncPlan:
        """Delete the items Orthanc holds under this bridge's IDs that the store does not
        know, and queue every item Orthanc should hold or should lose (the outbox then puts
        or removes each, and put() leaves alone what Orthanc removed by itself)."""
        db = self.store.store
        # Orthanc first, the store second: an item created in between is in the store.
        remote = {r.id for r in await asyncio.to_thread(self.client.list)}
        items = await self.store.run(db.items)
        wanted = {self.remote_id(i.item_key): i for i in items}
        extra = sorted(rid for rid in remote if rid not in wanted and self.owns(rid))
        for rid in extra:
            await asyncio.to_thread(self.client.delete, rid)
            log.info("orthanc resync: deleted %s, which no item of the store has", rid)
        queue = [i.item_key for rid, i in wanted.items() if i.visible or rid in remote]
        await self.store.run(db.outbox_enqueue, self.name, queue)
        foreign = sum(1 for rid in remote if rid not in wanted and not self.owns(rid))
        return ResyncPlan(deleted=len(extra), queued=len(queue), foreign=foreign)

    async def aclose(self) -> None:
        self.client.close()
        await self._worker.close()


@dataclass
class ResyncPlan:
    deleted: int  # extra items with our IDs, deleted
    queued: int  # items queued for put or remove
    foreign: int  # items with other IDs, left alone


# What `deliver` says of each put that did not fail.
PUT = "put"  # Orthanc holds the item now
GONE = "gone"  # a delivered item Orthanc no longer holds: it removed it; not sent again


@dataclass
class Put:
    rid: str
    item: StoredItem  # its dataset may be the stored JSON text (decoded where it is sent)
    check: bool  # delivered before: ask Orthanc whether it still holds it first


def deliver(client: OrthancClient, puts: list[Put], threads: ThreadPoolExecutor
            ) -> list[str | Exception]:
    """PUT each item from `threads` (as many requests in flight as it has threads); PUT,
    GONE or the error of each. After a SinkUnavailable the puts not yet started are not
    sent (they get that error)."""
    unreachable: list[SinkUnavailable] = []

    def one(put: Put) -> str | Exception:
        if unreachable:
            return unreachable[0]
        try:
            if put.check and client.get(put.rid) is None:
                return GONE
            client.put(put.rid, tags_for(put.item.decoded()))
            return PUT
        except SinkUnavailable as exc:
            unreachable.append(exc)
            return exc
        except Exception as exc:
            return exc

    return list(threads.map(one, puts))


# The delivery process keeps a client (its kept-alive connections) and its threads per
# configuration.
_clients: dict[str, tuple[OrthancClient, ThreadPoolExecutor]] = {}


def _deliver_in_process(cfg: OrthancSinkConfig, puts: list[Put]) -> list[str | Exception]:
    key = cfg.model_dump_json()
    if key not in _clients:
        _clients[key] = (OrthancClient(cfg), ThreadPoolExecutor(cfg.parallel_requests))
    client, threads = _clients[key]
    return deliver(client, puts, threads)
