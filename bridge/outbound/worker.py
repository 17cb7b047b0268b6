"""The outbound outbox consumer: MPPS status messages to the RIS, durably and in order.

Each pending row is the head of its order's queue or waits (the store's `outbound_due`),
so an order's messages reach the RIS in the order of its events. A row is claimed before
it is sent (another process on the same store leaves it alone), built once and kept (every
retry sends the same bytes and control ID), and marked sent only on AA: a crash between the
AA and the mark sends it again (at least once), never the other way round.

While the RIS is down or silent the row is retried with exponential backoff and never
given up. An AE or AR stops it: dead, with the RIS's error text, until `outbound replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from bridge.config import RisConfig
from bridge.mapping.loader import MappingError
from bridge.outbound.builder import BuildError, build, gather
from bridge.outbound.profile import OutboundProfile, load_outbound
from bridge.outbound.sender import RisSender, RisUnavailable
from bridge.store import AsyncStore, OutboundRow

log = logging.getLogger(__name__)


def control_id(row_id: int) -> str:
    """MSH-10: the row and the millisecond it was built, in base 36 (a replay gets a new
    one); under 20 characters (ST in v2.3.1)."""
    return f"WB{_b36(row_id)}.{_b36(int(time.time() * 1000) % 36**7)}"


def _b36(n: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


class OutboundWorker:
    def __init__(self, ris: RisConfig, profile: OutboundProfile, store: AsyncStore, *,
                 poll_interval: float = 1.0):
        self.ris = ris
        self.profile = profile
        self.store = store
        self.sender = RisSender(ris)
        self.poll_interval = poll_interval
        self.outage: str | None = None  # why the RIS cannot be reached, while it cannot
        self._probes = 0
        self.wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._claimed: int | None = None  # the row being sent, given back on stop

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name=f"outbound-{self.ris.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._claimed is not None:  # stopped mid-send: the next start sends it at once
            await self.store.run(self.store.store.outbound_release, self._claimed)
            self._claimed = None
        await self.sender.close()

    def notify(self) -> None:
        self.wakeup.set()

    def reload(self) -> bool:
        """Load the profile file again (SIGHUP); an invalid one leaves the current one in
        use. Messages already built are sent as they are."""
        try:
            self.profile = load_outbound(Path(self.profile.file))
        except MappingError as exc:
            log.error("outbound profile not reloaded, still using the previous one:\n%s", exc)
            return False
        log.info("outbound profile %s reloaded", self.profile.name)
        return True

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.deliver_due()
            except Exception:
                log.exception("outbound %s: unexpected error", self.ris.name)
                busy = False
            if not busy:
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), self.poll_interval)

    def backoff(self, attempts: int) -> float:
        return min(self.ris.max_backoff,
                   self.ris.min_backoff * 2.0 ** min(max(attempts - 1, 0), 16))

    async def deliver_due(self) -> bool:
        """Send what is due now; True when something was sent or refused."""
        db = self.store.store
        rows = await self.store.run(db.outbound_due, self.ris.name, 50)
        busy = False
        for row in rows:
            lease = self.ris.connect_timeout + self.ris.ack_timeout + 30
            if not await self.store.run(db.outbound_claim, row.id, lease):
                continue
            self._claimed = row.id
            delivered = await self._deliver(row)
            self._claimed = None
            if not delivered:
                return busy  # the RIS is unreachable: the rest waits for its turn
            busy = True
        return busy

    async def _deliver(self, row: OutboundRow) -> bool:
        """One row; False when the RIS could not be reached."""
        db = self.store.store
        payload, cid = row.message, row.control_id
        if payload is None or cid is None:
            event = getattr(self.ris, row.event)
            try:
                order_event = await self.store.run(gather, db, row.order_key, row.item_keys,
                                                   row.event, row.mpps_uid, row.mpps,
                                                   event.control, event.status)
                cid = control_id(row.id)
                payload = build(self.profile, self.ris, order_event, cid).payload
            except BuildError as exc:
                log.error("outbound %s: message %d (%s) cannot be built: %s", self.ris.name,
                          row.id, row.event, exc)
                await self.store.run(db.outbound_dead, row.id, None, f"not built: {exc}")
                return True
            await self.store.run(db.outbound_built, row.id, payload, cid)
        try:
            answer = await self.sender.send(payload, cid)
        except RisUnavailable as exc:
            attempts = row.attempts + 1
            delay = self.backoff(attempts)
            self._probes += 1
            if self.outage is None:
                log.warning("outbound %s: RIS %s:%d unreachable, retrying with backoff: %s",
                            self.ris.name, self.ris.host, self.ris.port, exc)
            self.outage = str(exc)
            await self.store.run(db.outbound_retry, row.id, str(exc), delay)
            return False
        if self.outage is not None:
            log.warning("outbound %s: RIS reachable again after %d failed attempt(s)",
                        self.ris.name, self._probes)
            self.outage, self._probes = None, 0
        if answer.accepted:
            await self.store.run(db.outbound_sent, row.id, answer.code)
            log.info("outbound %s: message %d (%s, control ID %s) accepted", self.ris.name,
                     row.id, row.event, cid)
        else:
            error = answer.text or f"{answer.code} without an error text"
            await self.store.run(db.outbound_dead, row.id, answer.code, error)
            log.error("outbound %s: message %d (%s, control ID %s) refused with %s: dead "
                      "until replayed (outbound list --dead)", self.ris.name, row.id,
                      row.event, cid, answer.code)
        return True
