"""The MLLP listener in process, with a real processor and store, and our MLLP client."""

from __future__ import annotations

import asyncio

import pytest

from bridge.client import MllpClient, ack_code
from bridge.listener import Limits, MllpServer

from orders import orm


@pytest.fixture
async def server(processor):
    srv = MllpServer(processor, max_message_bytes=4096)
    port = await srv.start("127.0.0.1", 0)
    yield port
    await srv.close()


def control_id_of(ack: bytes) -> str:
    msa = next(s for s in ack.split(b"\r") if s.startswith(b"MSA"))
    return msa.split(b"|")[2].decode()


async def test_many_messages_on_one_connection_are_acked_in_order(server) -> None:
    async with MllpClient("127.0.0.1", server) as client:
        for i in range(20):
            ack = await client.send(orm(f"S{i}", order=f"O{i}").encode())
            assert (ack_code(ack), control_id_of(ack)) == ("AA", f"S{i}")


async def test_pipelined_messages_get_their_acks_in_order(server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"".join(b"\x0b" + orm(f"P{i}", order=f"Q{i}").encode() + b"\x1c\r"
                          for i in range(10)))
    await writer.drain()
    ids = []
    for _ in range(10):
        block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
        ids.append(control_id_of(block[1:-2]))
    assert ids == [f"P{i}" for i in range(10)]
    writer.close()


async def test_concurrent_connections(server) -> None:
    async def one(n: int) -> list[str]:
        async with MllpClient("127.0.0.1", server) as client:
            return [ack_code(await client.send(orm(f"C{n}-{i}", order=f"C{n}-{i}").encode()))
                    for i in range(5)]

    results = await asyncio.gather(*(one(n) for n in range(4)))
    assert results == [["AA"] * 5] * 4


async def test_noise_bad_frames_and_oversized_frames_do_not_end_the_connection(server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)

    async def ack_for(payload: bytes) -> bytes:
        writer.write(payload)
        await writer.drain()
        return (await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10))[1:-2]

    # Noise before the start block is skipped; the frame after it is processed.
    assert ack_code(await ack_for(b"\r\n junk" + b"\x0b" + orm("N1").encode() + b"\x1c\r")) \
        == "AA"
    assert ack_code(await ack_for(b"\x0bnot hl7 at all\x1c\r")) == "AR"
    assert ack_code(await ack_for(b"\x0b" + b"X" * 10_000 + b"\x1c\r")) == "AR"
    assert ack_code(await ack_for(b"\x0b" + orm("N2", order="N2").encode() + b"\x1c\r")) == "AA"
    writer.close()


async def test_a_connection_with_a_message_in_hand_is_never_evicted(processor) -> None:
    # Per-peer limit 1: a second connection from the same address would take the place of a
    # waiting one, but not of one whose message is being stored (its ACK would be lost).
    release = asyncio.Event()
    received = asyncio.Event()

    class Slow:
        async def handle(self, raw: bytes, peer: str):
            received.set()
            await release.wait()
            return await processor.handle(raw, peer)

        async def oversized(self, peer: str, limit: int):
            return await processor.oversized(peer, limit)

    srv = MllpServer(Slow(), limits=Limits(max_connections_per_peer=1))
    port = await srv.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x0b" + orm("BUSY1", order="BUSY1").encode() + b"\x1c\r")
        await writer.drain()
        await asyncio.wait_for(received.wait(), 10)
        second_reader, second_writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(second_reader.read(), 10) == b""  # refused at once
        second_writer.close()
        assert srv.metrics.registry.get_sample_value(
            "hl7bridge_mllp_connections_closed_total",
            {"reason": "max_connections_per_peer"}) == 1
        release.set()
        ack = (await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10))[1:-2]
        assert (ack_code(ack), control_id_of(ack)) == ("AA", "BUSY1")
        writer.close()
    finally:
        await srv.close()

