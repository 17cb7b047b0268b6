"""The MLLP listener: frames in, one ACK per frame out, in order, on every connection.

Built on python-hl7's asyncio MLLP streams (`hl7.mllp`), reading raw blocks: the character
set is each message's own business (decoding.py), not the stream's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from ssl import SSLContext
from typing import Protocol

from hl7.mllp import MLLPStreamReader
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from bridge.metrics import Metrics
from bridge.processor import Outcome
from bridge.tls import peer_subject

log = logging.getLogger(__name__)

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


async def read_frame(reader: MLLPStreamReader) -> bytes | None:
    """The payload of the next MLLP frame; None at a clean end of stream.

    Bytes before the start block (noise, a sender's stray newline) are skipped. A frame over
    the reader's limit raises FrameTooLarge after its bytes have been discarded.
    """
    while True:
        try:
            block = await reader.readuntil(FRAME_END)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                log.warning("connection closed inside a frame (%d bytes dropped)",
                            len(exc.partial))
            return None
        except asyncio.LimitOverrunError as exc:
            # The buffered bytes hold the frame's start: keep its first bytes for the ACK.
            buffered = await reader.readexactly(exc.consumed)
            start = buffered.rfind(START_BLOCK)
            head = buffered[start + 1:start + 1 + HEAD_BYTES] if start != -1 else b""
            await _discard_frame(reader, 0)
            raise FrameTooLarge(head) from exc
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


@dataclass(frozen=True)
class Limits:
    """What one sender may cost us (mllp.* in the configuration)."""

    max_message_bytes: int = 1_048_576
    max_connections: int = 64
    # Seconds for the next frame to arrive complete, or for the sender to take its ACK;
    # 0 waits for ever. A trickling or stuck sender is closed after that.
    idle_timeout: float = 3600.0


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
        self.connections: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            reader = MLLPStreamReader(limit=self.max_message_bytes, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._connected, loop=loop)

        handshake = min(self.limits.idle_timeout or 60.0, 60.0) if self.ssl else None
        self.server = await loop.create_server(factory, host, port, ssl=self.ssl,
                                               ssl_handshake_timeout=handshake)
        sock = self.server.sockets[0]
        return sock.getsockname()[1]

    def _connected(self, reader: MLLPStreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= self.limits.max_connections:
            # Closing at once (no ACK: there is no message yet) makes the sender retry later
            # instead of waiting on a connection nobody serves.
            log.warning("MLLP connection from %s refused: %d connections open (the limit)",
                        _peer(writer), len(self.connections))
            self.metrics.closed.labels("max_connections").inc()
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def _serve(self, reader: MLLPStreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # ACKs are small: without NODELAY, Nagle holds them back ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = _peer(writer)
        subject = peer_subject(writer.get_extra_info("peercert"))
        log.info("MLLP connection from %s%s", peer, f" (certificate {subject})" if subject else "")
        timeout = self.limits.idle_timeout or None
        self.metrics.connections.inc()
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: no extra task per frame on the hot path
                    async with asyncio.timeout(timeout):
                        frame = await read_frame(reader)
                except FrameTooLarge as too_large:
                    frame = None
                    started = time.perf_counter()
                    outcome = await self.handler.oversized(peer, self.max_message_bytes,
                                                           too_large.head)
                except TimeoutError:
                    log.info("MLLP connection from %s: no complete frame for %g s, closing",
                             peer, self.limits.idle_timeout)
                    self.metrics.closed.labels("idle_timeout").inc()
                    break
                else:
                    if frame is None:
                        break
                    started = time.perf_counter()
                    outcome = await self.handler.handle(frame, peer)
                write_frame(writer, outcome.ack)
                # A sender that never reads its ACKs would block us here for ever.
                async with asyncio.timeout(timeout):
                    await writer.drain()
                self.metrics.message_answered(frame, outcome.code,
                                              time.perf_counter() - started)
        except TimeoutError:
            log.warning("MLLP connection from %s: ACK not taken in %g s, closing", peer,
                        self.limits.idle_timeout)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("%s: connection error", peer)
        finally:
            self.metrics.connections.dec()
            log.info("MLLP connection from %s closed", peer)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)


def _peer(writer: asyncio.StreamWriter) -> str:
    return "{}:{}".format(*(writer.get_extra_info("peername") or ("?", "?"))[:2])
