"""The MLLP client to the RIS: one connection kept open while there is work, one message
and its ACK at a time, the ACK read for its code and error text."""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass

from bridge.client import MllpClient
from bridge.config import RisConfig
from bridge.tls import client_context


class RisUnavailable(Exception):
    """The RIS cannot be reached, closed the connection or did not answer in time: the
    message is retried later, the RIS is not blamed for it."""


@dataclass(frozen=True)
class Answer:
    code: str  # MSA-1: AA, AE, AR (CA, CE, CR in enhanced mode)
    text: str  # the RIS's error text (ERR, else MSA-3); "" for an AA

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def read_ack(ack: bytes, control_id: str) -> Answer | None:
    """MSA-1 and the error text of an ACK for `control_id`; None when it is not one (no
    MSA, or an MSA-2 naming another message)."""
    text = ack.decode("latin-1").replace("\n", "\r")
    segments = [s for s in text.split("\r") if s.strip()]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        return None
    field_sep, comp_sep = segments[0][3], segments[0][4]
    msa = next((s.split(field_sep) for s in segments if s.startswith("MSA")), None)
    if msa is None or len(msa) < 2:
        return None
    if len(msa) > 2 and msa[2].strip() and msa[2].strip() != control_id:
        return None
    code = msa[1].strip().upper()
    errors = []
    for seg in segments:
        if not seg.startswith("ERR"):
            continue
        fields = seg.split(field_sep) + [""] * 9
        if fields[8].strip():  # v2.5+: ERR-8, the user message
            errors.append(fields[8])
        elif fields[3].strip():  # v2.5+: ERR-3, the code: its text
            parts = fields[3].split(comp_sep)
            errors.append(parts[1] if len(parts) > 1 and parts[1] else parts[0])
        elif fields[1].strip():  # v2.3: ERR-1 (ELD), the code in component 4
            parts = fields[1].split(comp_sep)
            errors.append(parts[3] if len(parts) > 3 and parts[3] else fields[1])
    if not errors and len(msa) > 3 and msa[3].strip():
        errors.append(msa[3])
    return Answer(code, "; ".join(e.strip() for e in errors))


def ris_context(ris: RisConfig) -> ssl.SSLContext | None:
    tls = ris.tls
    if not tls.enabled:
        return None
    return client_context(tls.ca_file, tls.certfile, tls.keyfile, tls.check_hostname)


class RisSender:
    """Sends one message at a time on a connection it opens on demand and keeps."""

    def __init__(self, ris: RisConfig):
        self.ris = ris
        self.ssl = ris_context(ris)
        self._client: MllpClient | None = None

    async def send(self, payload: bytes, control_id: str) -> Answer:
        try:
            if self._client is None:
                client = MllpClient(self.ris.host, self.ris.port, self.ris.connect_timeout,
                                    self.ssl)
                await client.__aenter__()
                client.timeout = self.ris.ack_timeout
                self._client = client
            ack = await self._client.send(payload)
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            await self.close()
            raise RisUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        answer = read_ack(ack, control_id)
        if answer is None:
            await self.close()  # an answer to something else: start afresh
            raise RisUnavailable("the RIS answered with something that is not an ACK of "
                                 "this message")
        return answer

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
