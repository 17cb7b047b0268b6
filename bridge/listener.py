"""The MLLP listener: frames in, one ACK per frame out, in order, on every connection.

Built on python-hl7's asyncio MLLP streams (`hl7.mllp`), reading raw blocks: the character
set is each message's own business (decoding.py), not the stream's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol

from hl7.mllp import MLLPStreamReader
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from bridge.processor import Outcome

log = logging.getLogger(__name__)

FRAME_END = END_BLOCK + CARRIAGE_RETURN


class Handler(Protocol):
    async def handle(self, raw: bytes, peer: str) -> Outcome: ...

    async def oversized(self, peer: str, limit: int) -> Outcome: ...


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(START_BLOCK + payload + FRAME_END)


class FrameTooLarge(Exception):
    pass


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
            await _discard_frame(reader, exc.consumed)
            raise FrameTooLarge() from exc
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


class MllpServer:
    def __init__(self, handler: Handler, *, max_message_bytes: int = 1_048_576):
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            reader = MLLPStreamReader(limit=self.max_message_bytes, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._connected, loop=loop)

        self.server = await loop.create_server(factory, host, port)
        sock = self.server.sockets[0]
        return sock.getsockname()[1]

    def _connected(self, reader: MLLPStreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def _serve(self, reader: MLLPStreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # ACKs are small: without NODELAY, Nagle holds them back ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = "{}:{}".format(*(writer.get_extra_info("peername") or ("?", "?"))[:2])
        log.info("MLLP connection from %s", peer)
        try:
            while True:
                try:
                    frame = await read_frame(reader)
                except FrameTooLarge:
                    outcome = await self.handler.oversized(peer, self.max_message_bytes)
                else:
                    if frame is None:
                        break
                    outcome = await self.handler.handle(frame, peer)
                write_frame(writer, outcome.ack)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("%s: connection error", peer)
        finally:
            log.info("MLLP connection from %s closed", peer)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
