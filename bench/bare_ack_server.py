"""The peer for bench_ingest.py: an asyncio MLLP server that only ACKs.

    python bench/bare_ack_server.py PORT

It frames with the same python-hl7 stream reader as the bridge and answers every frame with
a fixed AA carrying the frame's MSH-10: the floor under any HL7 listener in Python here.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from hl7.mllp import MLLPStreamReader

START, END = b"\x0b", b"\x1c\r"


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()

    async def connected(reader: MLLPStreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                block = await reader.readuntil(END)
                fields = block[block.find(START) + 1:].split(b"\r", 1)[0].split(b"|")
                control_id = fields[9] if len(fields) > 9 else b""
                writer.write(START + b"MSH|^~\\&|ACK||||||ACK|1|P|2.5\rMSA|AA|" + control_id
                             + b"\r" + END)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def factory() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(MLLPStreamReader(limit=2**20, loop=loop), connected,
                                            loop=loop)

    server = await loop.create_server(factory, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
