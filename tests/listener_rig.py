"""An in-process bridge for hostile-input tests, and a blocking MLLP client with bounded waits.

`BridgeThread` runs the real `Bridge` (listener, processor, SQLite store, folder sink) on an
event loop of its own thread, so that synchronous tests (hypothesis) talk to it over TCP as
any sender would. `RawClient` writes exactly the bytes a test wants, split as it wants, and
never waits longer than its timeout.
"""

from __future__ import annotations

import asyncio
import re
import select
import socket
import threading
import time
from pathlib import Path

from bridge.app import Bridge
from bridge.client import ack_code, split_messages
from bridge.config import Config, load_config

from peers import FIXTURES, ROOT

SB, EB, CR = b"\x0b", b"\x1c", b"\r"
FRAME_END = EB + CR
WAIT = 20.0  # the longest any single wait in these tests may take


def frame(payload: bytes) -> bytes:
    return SB + payload + FRAME_END


def fixture_message(name: str = "dcm4che__ORM_O01_v231_2019.hl7") -> bytes:
    return split_messages((FIXTURES / name).read_bytes())[0]


def with_control_id(message: bytes, control_id: str) -> bytes:
    """The message with MSH-10 replaced (field separator "|")."""
    head, _, rest = message.partition(b"\r")
    fields = head.split(b"|")
    fields[9] = control_id.encode()
    return b"|".join(fields) + b"\r" + rest


def rig_config(tmp: Path, **overrides: str) -> Config:
    env = {"BRIDGE_DATA_DIR": str(tmp / "data"), "BRIDGE_MLLP__PORT": "0",
           "BRIDGE_METRICS__ENABLED": "false", "BRIDGE_SCP__ENABLED": "false"}
    env.update({f"BRIDGE_{k.upper()}": str(v) for k, v in overrides.items()})
    return load_config(ROOT / "config.yaml", env)


class BridgeThread:
    def __init__(self, config: Config):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.bridge: Bridge | None = None

    def call(self, coro, timeout: float = WAIT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> BridgeThread:
        self.thread.start()

        async def start() -> Bridge:
            bridge = Bridge(self.config)
            await bridge.start()
            return bridge

        self.bridge = self.call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bridge is not None:
            self.call(self.bridge.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()

    @property
    def port(self) -> int:
        assert self.bridge is not None and self.bridge.mllp_port
        return self.bridge.mllp_port

    def journal_count(self) -> int:
        assert self.bridge is not None
        db = self.bridge.store.store
        return self.call(self.bridge.store.run(
            lambda: db.db.execute("SELECT COUNT(*) FROM journal").fetchone()[0]))


class RawClient:
    """A sender that writes raw bytes and reads ACK frames, every wait bounded."""

    def __init__(self, port: int, timeout: float = WAIT, ssl_context=None, host="127.0.0.1",
                 source: str | None = None):
        # `source`: another loopback address (127.0.0.2...; Linux routes all of 127/8 to lo)
        # stands for another sender machine.
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes, chunks: list[int] | None = None, pause: float = 0.0) -> None:
        """Send `data`, cut at the offsets in `chunks` (each piece its own send)."""
        cuts = sorted({c for c in (chunks or []) if 0 < c < len(data)})
        start = 0
        for cut in [*cuts, len(data)]:
            self.sock.sendall(data[start:cut])
            start = cut
            if pause:
                time.sleep(pause)

    def read_ack(self) -> bytes | None:
        """The next ACK payload; None when the bridge closed the connection."""
        deadline = time.monotonic() + self.timeout
        while FRAME_END not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no ACK in time")
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        block, self.buffer = self.buffer.split(FRAME_END, 1)
        start = block.rfind(SB)
        assert start != -1, f"ACK frame without a start block: {block[:80]!r}"
        return block[start + 1:]

    def exchange(self, message: bytes) -> bytes:
        self.send(frame(message))
        ack = self.read_ack()
        assert ack is not None, "connection closed instead of an ACK"
        return ack

    def wait_closed(self) -> bool:
        """True once the bridge has closed the connection (bounded by the timeout)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
            if not chunk:
                return True
            self.buffer += chunk
        return False


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA") and len(segment) > 3:
            fields = segment.split(segment[3:4])
            return ack_code(ack), (fields[2].decode("latin-1") if len(fields) > 2 else "")
    return "", ""


_ERR_CODE = re.compile(rb"^\d+")


def err_code(ack: bytes) -> int | None:
    """ERR-3.1 (the HL7 table 0357 code) of an ACK, None without ERR."""
    for segment in ack.split(b"\r"):
        if segment.startswith(b"ERR") and len(segment) > 3:
            fields = segment.split(segment[3:4])
            match = _ERR_CODE.match(fields[3]) if len(fields) > 3 else None
            return int(match.group()) if match else None
    return None


def open_junk(port: int, count: int, source: str = "127.0.0.1",
              batch_size: int | None = 20) -> list[socket.socket]:
    """`count` connections from `source` that send nothing.

    Opened in batches, each established (or 5 s gone) before the next: a burst beyond the
    listen backlog would have its SYNs dropped and retried a second or more later, so the
    flood would trickle in over the test's waits. `batch_size=None`: all at once.
    """
    socks: list[socket.socket] = []
    while len(socks) < count:
        batch = []
        for _ in range(min(batch_size or count, count - len(socks))):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            batch.append(sock)
        deadline = time.monotonic() + (5.0 if batch_size else 0.0)
        pending = list(batch)
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending, [], 0.5)
            pending = [s for s in pending if s not in writable]
        socks += batch
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of `socks` the bridge has not closed."""
    count = 0
    for sock in socks:
        try:
            if sock.recv(1, socket.MSG_PEEK):
                count += 1
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def accounted(bridge: BridgeThread) -> int:
    """Connections the bridge holds plus those it has closed: every accepted one counts."""
    async def count() -> int:
        mllp = bridge.bridge.mllp
        closed = sum(s.value for m in mllp.metrics.closed.collect() for s in m.samples
                     if s.name.endswith("_total"))
        return len(mllp.connections) + int(closed)

    return bridge.call(count())
