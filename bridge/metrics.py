"""Operational metrics, served as Prometheus `/metrics` by the HTTP server (bridge/web/).

Metric names (all prefixed ``hl7bridge_``):

- ``messages_total{message_type, result}``: every MLLP frame answered, by MSH-9 (``ORM^O01``;
  ``other`` past a bound, ``none`` when unreadable) and MSA-1 (AA, AE, AR).
- ``ack_latency_seconds``: histogram, frame fully received -> ACK handed to the socket.
- ``outbox_depth{sink}``: items waiting for each sink (read from the store at each scrape).
- ``mllp_connections``: open MLLP connections; ``mllp_connections_closed_total{reason}``:
  connections the bridge closed (``max_connections``, ``idle_timeout``).
- ``mapping_warnings_total{profile, rule, kind}``: mapping warnings (a code left out, a value
  truncated...) per profile, rule (``Keyword (file.yaml:line:col)``) and kind; each is logged
  once per mapping reload (``bridge/mapping/recurring.py``).
- ``storage_full``: 1 while the store cannot write (disk full): messages get AE.
- ``cfind_latency_seconds``: histogram for the MWL SCP to observe, one C-FIND from request to
  final status (``Bridge.metrics.cfind_latency.observe(seconds)``).

The HTTP server runs in the bridge's own loop: the outbox depth is read through the
store's own thread like every other store call, and nothing here needs a lock.
"""

from __future__ import annotations

import logging
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0)
# A label value comes from the sender: bound what it may be and how many there may be, or a
# hostile sender could grow the registry without limit with random MSH-9 values.
_TYPE = re.compile(rb"^[A-Z0-9]{2,4}(?:\^[A-Z0-9]{2,4})?$")
MAX_MESSAGE_TYPES = 64


def message_type_of(raw: bytes) -> str:
    """MSH-9.1^9.2 read from the raw header, as a bounded label value."""
    head = raw.lstrip(b"\xef\xbb\xbf\r\n\t ")[:512]
    if not head.startswith(b"MSH") or len(head) < 9:
        return "none"
    head = head.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if len(head) < 9:
        return "none"
    fields = head.split(head[3:4])
    if len(fields) < 9:
        return "none"
    comp = head[4:5] or b"^"
    parts = fields[8].split(comp)[:2]
    value = comp.join(p for p in parts if p) if parts else b""
    return value.decode("ascii") if _TYPE.match(value) else "other"


class Metrics:
    """The bridge's metrics, in a registry of their own (several bridges may share a process
    in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("hl7bridge_messages", "MLLP messages answered, by MSH-9 "
                                "type and ACK code", ["message_type", "result"], registry=r)
        self.ack_latency = Histogram("hl7bridge_ack_latency_seconds", "Frame received to ACK "
                                     "sent", buckets=_LATENCY_BUCKETS, registry=r)
        self.outbox_depth = Gauge("hl7bridge_outbox_depth", "Items waiting for a sink",
                                  ["sink"], registry=r)
        self.connections = Gauge("hl7bridge_mllp_connections", "Open MLLP connections",
                                 registry=r)
        self.closed = Counter("hl7bridge_mllp_connections_closed", "MLLP connections "
                              "closed by the bridge", ["reason"], registry=r)
        self.cfind_latency = Histogram("hl7bridge_cfind_latency_seconds", "MWL C-FIND, "
                                       "request to final status", buckets=_LATENCY_BUCKETS,
                                       registry=r)
        self.mapping_warnings = Counter("hl7bridge_mapping_warnings", "Mapping warnings by "
                                        "profile, rule and kind", ["profile", "rule", "kind"],
                                        registry=r)
        self.storage_full = Gauge("hl7bridge_storage_full", "1 while the store cannot "
                                  "write for want of space (messages get AE)", registry=r)
        self._types: set[str] = set()

    def message_answered(self, raw: bytes | None, result: str, seconds: float) -> None:
        kind = message_type_of(raw) if raw is not None else "none"
        if kind not in self._types:
            if len(self._types) >= MAX_MESSAGE_TYPES:
                kind = "other"
            else:
                self._types.add(kind)
        self.messages.labels(kind, result or "none").inc()
        self.ack_latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
