"""A RIS for the outbound tests: an MLLP listener (python-hl7's mllp streams) on its own
thread and event loop that records every message and answers AA, AE (with an ERR text) or
nothing, as the test says. It is down until `start()`."""

from __future__ import annotations

import asyncio
import threading
import time

import hl7
from hl7.mllp import start_hl7_server


class RisSimulator:
    def __init__(self, port: int):
        self.port = port
        self.answer = "AA"  # AA | AE | AR | silent
        self.error_text = "Unknown order"
        self.received: list[bytes] = []  # every message, in arrival order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._writers: set = set()

    # --- the listener ----------------------------------------------------------------------

    async def _client(self, reader, writer) -> None:
        self._writers.add(writer)
        try:
            while True:
                message = await reader.readmessage()
                raw = str(message).encode("latin-1")
                with self._lock:
                    self.received.append(raw)
                    answer, text = self.answer, self.error_text
                if answer == "silent":
                    continue
                control_id = str(message.segment("MSH")[10])
                ack = (f"MSH|^~\\&|RIS|HOSP|HL7WB||{time.strftime('%Y%m%d%H%M%S')}||ACK^O01|"
                       f"A{control_id}|P|2.3.1\rMSA|{answer}|{control_id}")
                if answer != "AA":
                    ack += (f"|{text}\rERR||ORC^1^2|204^Unknown key identifier^HL70357|E||||"
                            f"{text}")
                writer.writemessage(hl7.parse(ack + "\r"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def start(self) -> None:
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()

            async def serve() -> None:
                self._server = await start_hl7_server(self._client, "127.0.0.1", self.port,
                                                      encoding="latin-1")
                started.set()

            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="ris-sim")
        self._thread.start()
        assert started.wait(10), "the RIS simulator did not start"

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def close() -> None:
            self._server.close()
            for writer in list(self._writers):  # the bridge's open connection: a RIS going down
                writer.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    # --- what the tests read ---------------------------------------------------------------

    def set_answer(self, answer: str, text: str = "Unknown order") -> None:
        with self._lock:
            self.answer, self.error_text = answer, text

    def messages(self) -> list[hl7.Message]:
        with self._lock:
            return [hl7.parse(raw.decode("latin-1")) for raw in self.received]

    def count(self) -> int:
        with self._lock:
            return len(self.received)
