"""The MLLP listener: frames in, one ACK per frame out, in order, on every connection.

Built on python-hl7's asyncio MLLP streams (`hl7.mllp`), reading raw blocks: the character
set is each message's own business (decoding.py), not the stream's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass
from ssl import SSLContext
from typing import Protocol

from hl7.mllp import MLLPStreamReader
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from bridge import logthrottle
from bridge.config import MllpConfig
from bridge.logthrottle import THROTTLE_KEY
from bridge.metrics import Metrics
from bridge.processor import Outcome
from bridge.tls import peer_subject

log = logging.getLogger(__name__)
# Every line below names a peer; a flood of connections must not become a flood of lines.
_repeats = logthrottle.install(log, burst=5)

FRAME_END = END_BLOCK + CARRIAGE_RETURN


class Handler(Protocol):
    async def handle(self, raw: bytes, peer: str) -> Outcome: ...

    async def oversized(self, peer: str, limit: int, head: bytes = b"") -> Outcome: ...


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(START_BLOCK + payload + FRAME_END)


class FrameTooLarge(Exception):
    def __init__(self, head: bytes = b""):
        super().__init__("frame too large")
        self.head = head  # the frame's first bytes (its MSH-10 names it in the ACK)


HEAD_BYTES = 4096  # of an oversized frame kept for its ACK


async def read_frame(reader: MLLPStreamReader, head: bytes = b"") -> bytes | None:
    """The payload of the next MLLP frame; None at a clean end of stream.

    `head` is a first byte the caller already read (to start a frame's clock). Bytes before
    the start block (noise, a sender's stray newline) are skipped. A frame over the reader's
    limit raises FrameTooLarge after its bytes have been discarded.
    """
    while True:
        try:
            block = head + await reader.readuntil(FRAME_END)
        except asyncio.IncompleteReadError as exc:
            if (head + exc.partial).strip():
                log.warning("connection closed inside a frame (%d bytes dropped)",
                            len(head + exc.partial))
            return None
        except asyncio.LimitOverrunError as exc:
            # The buffered bytes hold the frame's start: keep its first bytes for the ACK.
            buffered = head + await reader.readexactly(exc.consumed)
            start = buffered.rfind(START_BLOCK)
            first = buffered[start + 1:start + 1 + HEAD_BYTES] if start != -1 else b""
            await _discard_frame(reader, 0)
            raise FrameTooLarge(first) from exc
        head = b""
        start = block.rfind(START_BLOCK)
        if start == -1:
            log.warning("%d bytes without an MLLP start block skipped", len(block))
            continue
        if start > 0:
            log.warning("%d bytes before the MLLP start block skipped", start)
        return block[start + 1:-len(FRAME_END)]


async def _discard_frame(reader: MLLPStreamReader, consumed: int) -> None:
    """Drop an oversized frame up to and including its end block."""
    while True:
        try:
            await reader.readuntil(FRAME_END)
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Limits:
    """What one sender may cost us (mllp.* in the configuration)."""

    max_message_bytes: int = 1_048_576
    max_connections: int = 64
    # Seconds for the next frame to arrive complete, or for the sender to take its ACK;
    # 0 waits for ever. An idle or stuck sender is closed after that.
    idle_timeout: float = 300.0
    # Seconds from a frame's first byte to its end block: bounds byte-at-a-time senders.
    frame_timeout: float = 30.0
    max_connections_per_peer: int = 8
    allowed_peers: tuple[Network, ...] = ()  # empty: any address
    handshake_timeout: float = 10.0  # TLS only
    max_handshakes: int = 32  # TLS only

    @classmethod
    def from_config(cls, mllp: MllpConfig) -> Limits:
        return cls(max_message_bytes=mllp.max_message_bytes,
                   max_connections=mllp.max_connections, idle_timeout=mllp.idle_timeout,
                   frame_timeout=mllp.frame_timeout,
                   max_connections_per_peer=mllp.max_connections_per_peer,
                   allowed_peers=tuple(ipaddress.ip_network(p, strict=False)
                                       for p in mllp.allowed_peers),
                   handshake_timeout=mllp.tls.handshake_timeout,
                   max_handshakes=mllp.tls.max_handshakes)


@dataclass(eq=False)
class _Connection:
    """An open connection, as the admission rules see it."""

    host: str  # the peer's address: what the per-peer limit counts
    writer: asyncio.StreamWriter
    waiting_since: float  # loop time it began waiting for its next frame (or handshake)
    handshaking: bool = False
    # Between a complete frame and its ACK taken: never evicted, or an order could be
    # stored without its sender ever hearing so (it would resend: a duplicate, not a loss).
    busy: bool = False
    task: asyncio.Task | None = None


class _Timeout(Exception):
    def __init__(self, reason: str, seconds: float):
        super().__init__(reason)
        self.reason, self.seconds = reason, seconds


class MllpServer:
    def __init__(self, handler: Handler, *, max_message_bytes: int = 1_048_576,
                 limits: Limits | None = None, ssl: SSLContext | None = None,
                 metrics: Metrics | None = None):
        self.handler = handler
        self.limits = limits or Limits(max_message_bytes=max_message_bytes)
        self.max_message_bytes = self.limits.max_message_bytes
        self.ssl = ssl
        self.metrics = metrics or Metrics()
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[_Connection] = set()
        self._by_host: dict[str, set[_Connection]] = {}
        self._handshaking: set[_Connection] = set()
        self._flusher: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            reader = MLLPStreamReader(limit=self.max_message_bytes, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._connected, loop=loop)

        logthrottle.install_asyncio()
        _check_file_limit(self.limits.max_connections + self.limits.max_handshakes)
        # TLS is started per connection (_handshake), after the admission rules: a peer over
        # its limit is closed before it costs a handshake.
        self.server = await loop.create_server(factory, host, port)
        self._flusher = loop.create_task(self._flush_repeats())
        sock = self.server.sockets[0]
        return sock.getsockname()[1]

    # --- admission: runs in connection_made, before a byte is read ----------------------

    def _connected(self, reader: MLLPStreamReader, writer: asyncio.StreamWriter) -> None:
        peer, host = _peer(writer), _host(writer)
        if self.limits.allowed_peers and not _allowed(host, self.limits.allowed_peers):
            self._refuse(writer, host, "not_allowed",
                         "MLLP connection from %s refused: not in mllp.allowed_peers", peer)
            return
        mine = self._by_host.get(host, set())
        if len(mine) >= self.limits.max_connections_per_peer and not self._evict_oldest(mine):
            self._refuse(writer, host, "max_connections_per_peer",
                         "MLLP connection from %s refused: %d connections from that address "
                         "(mllp.max_connections_per_peer), none of them waiting", peer,
                         len(mine))
            return
        tls = self.ssl is not None
        if tls and len(self._handshaking) >= self.limits.max_handshakes \
                and not self._evict_fair(self._handshaking, host):
            self._refuse(writer, host, "max_handshakes",
                         "MLLP connection from %s refused: %d TLS handshakes under way "
                         "(mllp.tls.max_handshakes)", peer, len(self._handshaking))
            return
        if len(self.connections) >= self.limits.max_connections \
                and not self._evict_fair(self.connections, host):
            # Closing at once (no ACK: there is no message yet) makes the sender retry later
            # instead of waiting on a connection nobody serves.
            self._refuse(writer, host, "max_connections",
                         "MLLP connection from %s refused: %d connections open (the limit)",
                         peer, len(self.connections))
            return
        loop = asyncio.get_running_loop()
        conn = _Connection(host, writer, loop.time(), handshaking=tls)
        if tls:
            # Not a byte into the stream reader: the TLS layer reads the ClientHello.
            writer.transport.pause_reading()
            self._handshaking.add(conn)
        self.connections.add(conn)
        self._by_host.setdefault(host, set()).add(conn)
        self.metrics.connections.inc()
        conn.task = loop.create_task(self._serve(conn, reader, writer))
        conn.task.add_done_callback(lambda _: self._forget(conn))

    def _refuse(self, writer: asyncio.StreamWriter, host: str, reason: str, msg: str,
                *args: object) -> None:
        log.warning(msg, *args, extra={THROTTLE_KEY: host})
        self.metrics.closed.labels(reason).inc()
        writer.close()

    def _evict_oldest(self, pool: set[_Connection]) -> bool:
        """Close the connection of `pool` that has waited longest for a frame, if any."""
        waiting = [c for c in pool if not c.busy]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.waiting_since)
        log.warning("MLLP connection from %s closed to make room for a new one (it had "
                    "waited %.0f s for a frame)", _peer(victim.writer),
                    asyncio.get_running_loop().time() - victim.waiting_since,
                    extra={THROTTLE_KEY: victim.host})
        self.metrics.closed.labels("evicted").inc()
        self._forget(victim)
        # A task cancelled before its first step never runs its finally: close here too.
        victim.writer.close()
        if victim.task is not None:
            victim.task.cancel()
        return True

    def _evict_fair(self, pool: set[_Connection], host: str) -> bool:
        """Make room in a full `pool` for a connection from `host`: take the place of a
        waiting connection of the peer holding the most, if it holds more than `host` would
        after admission. Peers of one connection each cannot be displaced."""
        counts = Counter(c.host for c in pool)
        newcomer = counts.get(host, 0) + 1
        for other, count in counts.most_common():
            if count <= newcomer:
                return False
            if self._evict_oldest({c for c in pool if c.host == other}):
                return True
        return False

    def _forget(self, conn: _Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self._handshaking.discard(conn)
        mine = self._by_host.get(conn.host)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self._by_host[conn.host]
        self.metrics.connections.dec()

    # --- one connection -------------------------------------------------------------------

    async def _serve(self, conn: _Connection, reader: MLLPStreamReader,
                     writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # ACKs are small: without NODELAY, Nagle holds them back ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = _peer(writer)
        extra = {THROTTLE_KEY: conn.host}
        loop = asyncio.get_running_loop()
        try:
            if conn.handshaking and not await self._handshake(conn, writer, peer):
                return
            subject = peer_subject(writer.get_extra_info("peercert"))
            log.info("MLLP connection from %s%s", peer,
                     f" (certificate {subject})" if subject else "", extra=extra)
            while True:
                conn.waiting_since = loop.time()
                try:
                    frame = await self._next_frame(reader)
                except FrameTooLarge as too_large:
                    frame = None
                    conn.busy = True
                    started = time.perf_counter()
                    outcome = await self.handler.oversized(peer, self.max_message_bytes,
                                                           too_large.head)
                except _Timeout as exc:
                    log.info("MLLP connection from %s: %s after %g s, closing", peer,
                             "frame not complete" if exc.reason == "frame_timeout"
                             else "no complete frame", exc.seconds, extra=extra)
                    self.metrics.closed.labels(exc.reason).inc()
                    break
                else:
                    if frame is None:
                        break
                    conn.busy = True
                    started = time.perf_counter()
                    outcome = await self.handler.handle(frame, peer)
                write_frame(writer, outcome.ack)
                # A sender that never reads its ACKs would block us here for ever.
                async with asyncio.timeout(self.limits.idle_timeout or None):
                    await writer.drain()
                conn.busy = False
                self.metrics.message_answered(frame, outcome.code,
                                              time.perf_counter() - started)
        except TimeoutError:
            log.warning("MLLP connection from %s: ACK not taken in %g s, closing", peer,
                        self.limits.idle_timeout, extra=extra)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the peer went, the bridge stops, or the connection was evicted
        except Exception:
            log.exception("%s: connection error", peer, extra=extra)
        finally:
            self._forget(conn)
            log.info("MLLP connection from %s closed", peer, extra=extra)
            writer.close()

    async def _handshake(self, conn: _Connection, writer: asyncio.StreamWriter,
                         peer: str) -> bool:
        assert self.ssl is not None
        try:
            await writer.start_tls(self.ssl,
                                   ssl_handshake_timeout=self.limits.handshake_timeout)
        except OSError as exc:  # ssl.SSLError, a reset, or the handshake timeout
            log.info("MLLP connection from %s: TLS handshake failed (%s)", peer,
                     getattr(exc, "reason", None) or type(exc).__name__,
                     extra={THROTTLE_KEY: conn.host})
            self.metrics.closed.labels("tls_handshake").inc()
            return False
        finally:
            conn.handshaking = False
            self._handshaking.discard(conn)
        return True

    async def _next_frame(self, reader: MLLPStreamReader) -> bytes | None:
        """The next frame, within idle_timeout; once its first byte is in, within
        frame_timeout as well. None at a clean end of stream."""
        loop = asyncio.get_running_loop()
        idle = self.limits.idle_timeout
        idle_deadline = loop.time() + idle if idle else None
        try:
            async with asyncio.timeout_at(idle_deadline):
                head = await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            return None
        except TimeoutError:
            raise _Timeout("idle_timeout", idle) from None
        frame_deadline = loop.time() + self.limits.frame_timeout
        reason, seconds = "frame_timeout", self.limits.frame_timeout
        if idle_deadline is not None and idle_deadline < frame_deadline:
            frame_deadline, reason, seconds = idle_deadline, "idle_timeout", idle
        try:
            async with asyncio.timeout_at(frame_deadline):
                return await read_frame(reader, head)
        except TimeoutError:
            raise _Timeout(reason, seconds) from None

    async def _flush_repeats(self) -> None:
        """Once an interval, the counts of log lines held back (logthrottle)."""
        while True:
            await asyncio.sleep(_repeats.interval)
            logthrottle.flush_all()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        tasks = [c.task for c in self.connections if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        logthrottle.flush_all(all_windows=True)  # what was held back is not lost at a stop


def _check_file_limit(connections: int) -> None:
    """Warn when the connection limits do not fit in the open-file limit: past it, accept()
    fails and asyncio retries it in a loop, refusing every sender alike."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + 128  # the store, the sinks, the SCP, the log
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("mllp.max_connections and mllp.tls.max_handshakes allow %d connections "
                    "but the open-file limit is %d: raise it (ulimit -n, LimitNOFILE=) or "
                    "lower them", connections, soft)


def _host(writer: asyncio.StreamWriter) -> str:
    """The peer's address, as the per-peer limit and the allowlist see it."""
    peername = writer.get_extra_info("peername")
    if not peername:
        return "?"
    return str(peername[0]).split("%", 1)[0]  # without an IPv6 scope (fe80::1%eth0)


def _allowed(host: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)


def _peer(writer: asyncio.StreamWriter) -> str:
    return "{}:{}".format(*(writer.get_extra_info("peername") or ("?", "?"))[:2])
