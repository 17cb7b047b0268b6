"""An MLLP client: send HL7 files to a listener and collect each ACK (the `send` command)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from pathlib import Path
from ssl import SSLContext

from hl7.mllp import MLLPStreamReader

from bridge.listener import read_frame, write_frame

_MSH_START = re.compile(rb"(?:^|[\r\n])(?=MSH)")


def split_messages(data: bytes) -> list[bytes]:
    """The messages in a file: each starts with MSH at the start of a line.

    Line ends become CR, the HL7 segment separator, whatever the file used.
    """
    data = data.removeprefix(b"\xef\xbb\xbf")
    parts = [p for p in _MSH_START.split(data) if p.strip()]
    out = []
    for part in parts:
        text = part.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r")
        out.append(text + b"\r")
    return out


class MllpClient:
    """One connection; `send` returns the ACK payload of each message in order."""

    def __init__(self, host: str, port: int, timeout: float = 30.0,
                 ssl: SSLContext | None = None):
        self.host, self.port, self.timeout = host, port, timeout
        self.ssl = ssl  # MLLP over TLS when given (bridge.tls.client_context)
        self.reader: MLLPStreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> MllpClient:
        loop = asyncio.get_running_loop()
        self.reader = MLLPStreamReader(limit=16 * 1024 * 1024, loop=loop)
        protocol = asyncio.StreamReaderProtocol(self.reader, loop=loop)
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: protocol, self.host, self.port, ssl=self.ssl),
            self.timeout)
        self.writer = asyncio.StreamWriter(transport, protocol, self.reader, loop)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    async def send(self, message: bytes) -> bytes:
        assert self.reader is not None and self.writer is not None
        write_frame(self.writer, message)
        await self.writer.drain()
        ack = await asyncio.wait_for(read_frame(self.reader), self.timeout)
        if ack is None:
            raise ConnectionError("the listener closed the connection without an ACK")
        return ack


def read_messages(files: list[Path]) -> list[tuple[Path, bytes]]:
    """Every message of every file, read before connecting: a missing file is an OSError
    naming it, not a failed connection."""
    return [(file, message) for file in files for message in split_messages(file.read_bytes())]


async def send_messages(messages: list[tuple[Path, bytes]], host: str, port: int,
                        timeout: float = 30.0, ssl: SSLContext | None = None
                        ) -> list[tuple[Path, bytes]]:
    results = []
    async with MllpClient(host, port, timeout, ssl) as client:
        for file, message in messages:
            results.append((file, await client.send(message)))
    return results


async def send_files(files: list[Path], host: str, port: int, timeout: float = 30.0,
                     ssl: SSLContext | None = None) -> list[tuple[Path, bytes]]:
    return await send_messages(read_messages(files), host, port, timeout, ssl)


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK payload ("" when there is no MSA)."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            fields = segment.split(segment[3:4] or b"|")
            return fields[1].decode("ascii", "replace") if len(fields) > 1 else ""
    return ""
