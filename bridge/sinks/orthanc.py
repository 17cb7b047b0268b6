"""The Orthanc sink: worklist items in the `/worklists` REST API of Orthanc's worklists plugin.

Every item has a fixed ID, ``<id_prefix><UUID5 of its item key>``, so ``PUT /worklists/{id}``
(an upsert, see ../shared/orthanc-worklists-api/06) creates or replaces it and a retry never
makes a duplicate; ``DELETE /worklists/{id}`` removes it, and 404 means it is gone already.

Orthanc also removes items by itself (DeleteWorklistsOnStableStudy: the study arrived). The
store remembers which items this sink has delivered; before replacing a delivered item the
sink asks Orthanc for it, and "Worklist not found" then means Orthanc removed it: the item
is recorded as removed by the sink and never sent again, by a retry, an update or a resync.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from dataclasses import dataclass

import httpx

from bridge.config import OrthancSinkConfig
from bridge.mapping.transforms import derived_uid
from bridge.sinks import SinkUnavailable
from bridge.store import AsyncStore, SinkState, StoredItem

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
        self.status = status
        self.body = body


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


def http_client(cfg: OrthancSinkConfig, transport: httpx.AsyncBaseTransport | None = None
                ) -> httpx.AsyncClient:
    """An httpx client for `cfg`: base URL, authentication, TLS and timeouts."""
    headers = dict(cfg.headers)
    if cfg.token:
        headers["Authorization"] = f"Bearer {cfg.token}"
    auth = httpx.BasicAuth(cfg.username, cfg.password or "") if cfg.username else None
    verify: bool | ssl.SSLContext = cfg.verify_tls
    if cfg.verify_tls and cfg.ca_bundle is not None:
        verify = ssl.create_default_context(cafile=str(cfg.ca_bundle))
    return httpx.AsyncClient(
        base_url=cfg.url.rstrip("/"), headers=headers, auth=auth, verify=verify,
        timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
        # Orthanc closes a connection idle for 1 s ("Keep-Alive: timeout=1", recording 06):
        # reusing one that old races with its close.
        limits=httpx.Limits(keepalive_expiry=0.5), transport=transport)


class OrthancClient:
    """The four calls of Orthanc's /worklists API the sink needs, with errors sorted into
    "Orthanc is unreachable" (SinkUnavailable) and "Orthanc refused this" (OrthancError)."""

    def __init__(self, http: httpx.AsyncClient):
        self.http = http

    async def put(self, worklist_id: str, tags: dict) -> None:
        # Force: the bridge's mapping decides what an item needs, not the plugin's checks.
        r = await self._request("PUT", f"/worklists/{worklist_id}",
                                json={"Tags": tags, "Force": True})
        if r.status_code == 404:
            raise SinkUnavailable(f"PUT {r.request.url.path}: HTTP 404: no /worklists API "
                                  "here (is Orthanc's worklists plugin enabled?)")
        self._check(r)

    async def get(self, worklist_id: str) -> dict | None:
        """The item's Tags, or None when Orthanc's plugin says it holds no such item."""
        r = await self._request("GET", f"/worklists/{worklist_id}")
        if r.status_code == 404:
            if _json(r).get("Details") == NOT_FOUND_DETAILS:
                return None
            raise SinkUnavailable(f"GET {r.request.url.path}: HTTP 404 without "
                                  f"{NOT_FOUND_DETAILS!r}: is the worklists plugin enabled?")
        self._check(r)
        return _json(r).get("Tags", {})

    async def delete(self, worklist_id: str) -> bool:
        """True when Orthanc removed the item now, False when it was not there."""
        r = await self._request("DELETE", f"/worklists/{worklist_id}")
        if r.status_code == 404:
            return False
        self._check(r)
        return True

    async def list(self) -> list[RemoteItem]:
        r = await self._request("GET", "/worklists")
        self._check(r)
        body = r.json()
        return [RemoteItem(str(e["ID"]), e.get("Tags", {})) for e in body]

    async def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            try:
                r = await self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
            except httpx.RemoteProtocolError:
                # A kept-alive connection closed by Orthanc as we sent on it: every call here
                # is idempotent, so once more on a new connection.
                r = await self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            # Refused, reset, timed out: nothing about the item, so the sink waits.
            raise SinkUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if r.status_code in (401, 403):
            raise SinkUnavailable(f"{method} {path}: HTTP {r.status_code}: authentication "
                                  "refused (sinks.orthanc username/password/token/headers)")
        if r.status_code in _PROXY_DOWN:
            raise SinkUnavailable(f"{method} {path}: HTTP {r.status_code} from a proxy")
        return r

    @staticmethod
    def _check(r: httpx.Response) -> None:
        if r.is_success:
            return
        raise OrthancError(r.request.method, r.request.url.path, r.status_code, _json(r))


def _json(r: httpx.Response) -> dict:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class OrthancSink:
    name = "orthanc"
    # One Orthanc for the cluster: each change is delivered by one instance (outbox leases).
    shared = True

    def __init__(self, cfg: OrthancSinkConfig, store: AsyncStore,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.cfg = cfg
        self.store = store
        self.client = OrthancClient(http_client(cfg, transport))

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
        """Create or replace several items: their states read in one trip to the store, up
        to `parallel_requests` requests in flight, the new deliveries recorded in one commit.
        One request at a time, a 10,000-order burst reached Orthanc 6 s after its last ACK
        (bench/bench_orthanc_sink.py): each put waited for a round trip and two commits.

        Raises the first item's error once every request has ended (the outbox then tries
        the batch's items one by one, so each error is charged to its own item); once
        Orthanc is unreachable, the requests not yet sent are not sent."""
        db = self.store.store
        states = await self.store.run(db.sink_states, self.name, [i.item_key for i in items])
        slots = asyncio.Semaphore(self.cfg.parallel_requests)
        delivered: list[tuple[str, str]] = []
        errors: list[Exception] = []

        async def one(item: StoredItem) -> None:
            async with slots:
                if any(isinstance(e, SinkUnavailable) for e in errors):
                    return
                try:
                    rid = await self._put(item, states.get(item.item_key))
                except Exception as exc:
                    errors.append(exc)
                    return
                if rid is not None:
                    delivered.append((item.item_key, rid))

        try:
            await asyncio.gather(*(one(item) for item in items))
        finally:
            if delivered:
                await self.store.run(db.sink_delivered_many, self.name, delivered)
        if errors:
            raise errors[0]

    async def _put(self, item: StoredItem, state: SinkState | None) -> str | None:
        """Put one item; returns its remote ID when it is newly delivered."""
        rid = self.remote_id(item.item_key)
        if state is not None and state.removed_at is not None:
            log.debug("orthanc: %s stays removed (Orthanc removed it)", item.item_key)
            return None
        if state is not None and state.delivered and await self.client.get(rid) is None:
            await self.store.run(self.store.store.sink_removed, self.name, item.item_key, rid)
            log.info("orthanc: %s (worklist %s) was removed by Orthanc itself (its study "
                     "arrived?): not recreating it", item.item_key, rid)
            return None
        await self.client.put(rid, tags_for(item))
        return None if state is not None and state.delivered else rid

    async def remove(self, item: StoredItem) -> None:
        db = self.store.store
        rid = self.remote_id(item.item_key)
        await self.client.delete(rid)
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
        remote = {r.id for r in await self.client.list()}
        items = await self.store.run(db.items)
        wanted = {self.remote_id(i.item_key): i for i in items}
        extra = sorted(rid for rid in remote if rid not in wanted and self.owns(rid))
        for rid in extra:
            await self.client.delete(rid)
            log.info("orthanc resync: deleted %s, which no item of the store has", rid)
        queue = [i.item_key for rid, i in wanted.items() if i.visible or rid in remote]
        await self.store.run(db.outbox_enqueue, self.name, queue)
        foreign = sum(1 for rid in remote if rid not in wanted and not self.owns(rid))
        return ResyncPlan(deleted=len(extra), queued=len(queue), foreign=foreign)

    async def aclose(self) -> None:
        await self.client.http.aclose()


@dataclass
class ResyncPlan:
    deleted: int  # extra items with our IDs, deleted
    queued: int  # items queued for put or remove
    foreign: int  # items with other IDs, left alone
