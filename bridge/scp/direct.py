"""C-FIND pending responses written straight to the association's socket.

Why this is hand-written (measured, bench/results.md "C-FIND"): through pynetdicom, each
pending C-FIND response cost about 0.55 ms of server CPU (0.9 ms with its default logging)
at 2,000 answers, of which the search and the answer's own encoding were a tenth. The
rest was pynetdicom's DIMSE path: a C_FIND primitive turned into a message whose command
set is a pydicom Dataset, written twice by pydicom's writer (once to learn its group
length), the identifier written again by pydicom, P-DATA primitives queued to the DUL
thread and encoded there into PDUs (cProfile: 64 % pydicom, 23 % stdlib queues and
isinstance, 6 % pynetdicom). A broad query for one modality (thousands of answers) spent
seconds there, and modalities give up after 10-30 s.

What is written here is small and fixed by PS3.7 and PS3.8: the command set of a pending
C-FIND-RSP (implicit VR little endian, six elements, the same for every answer of a query:
built once per query), and P-DATA-TF PDUs with one PDV each, fragmented to the peer's
maximum PDU length. Each item's identifier is encoded once per query shape, character set
and transfer syntax, and kept in `AnswerCache` until the item changes (the index replaces
an item's entry on every change, and the cache holds the entry it encoded).

pynetdicom keeps everything else: association negotiation, the C-FIND request and its
identifier, C-CANCEL (read by its DUL thread while answers are written here), the final
response (success, cancel, limit, failure), release and abort. The pending answers are
written from the association thread, which is the only thread sending on the association
while its C-FIND handler runs; they are flushed before the final response is handed back
to pynetdicom, so the order on the wire is the order of the responses.

Only little endian transfer syntaxes (implicit or explicit VR, not deflated) come this way;
the others keep pynetdicom's path. Answers whose character set has no single Python codec
(ISO 2022 code extensions) are encoded by pydicom, then written here too.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

from pynetdicom.dsutils import encode

from bridge.scp.encoding import _element, supported
from bridge.scp.matching import Answer
from bridge.scp.query import Key

PENDING = 0xFF00
C_FIND_RSP = 0x8020
DATASET_PRESENT = 0x0001  # what pynetdicom writes: anything but 0x0101 means "present"
SPECIFIC_CHARACTER_SET = 0x00080005

# Flush the written answers when this much is waiting: a few syscalls per broad query,
# and the modality sees its first answers at once (the first is always sent alone).
FLUSH_BYTES = 64 * 1024


def _implicit(tag: int, value: bytes | int) -> bytes:
    data = struct.pack("<H", value) if isinstance(value, int) else value
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data)) + data


def pending_command_set(message_id: int, sop_class_uid: str) -> bytes:
    """The command set of a pending C-FIND-RSP (PS3.7 9.3.2.2), implicit VR little endian,
    as pynetdicom writes it."""
    uid = sop_class_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\x00"
    body = b"".join((
        _implicit(0x00000002, uid),
        _implicit(0x00000100, C_FIND_RSP),
        _implicit(0x00000120, message_id),
        _implicit(0x00000800, DATASET_PRESENT),
        _implicit(0x00000900, PENDING),
    ))
    return _implicit(0x00000000, struct.pack("<I", len(body))) + body


def pdata(context_id: int, data: bytes, command: bool, max_pdu: int) -> bytes:
    """`data` as P-DATA-TF PDUs (PS3.8 9.3.5), one PDV each, every PDU within the peer's
    maximum length (0: no limit); the last fragment carries the "last" bit."""
    room = len(data) if max_pdu == 0 else max(max_pdu - 6, 1)
    out = []
    start = 0
    while True:
        chunk = data[start:start + room]
        start += room
        last = start >= len(data)
        header = (1 if command else 0) | (2 if last else 0)
        out.append(struct.pack(">BBIIBB", 0x04, 0, len(chunk) + 6, len(chunk) + 2,
                               context_id, header))
        out.append(chunk)
        if last:
            return b"".join(out)


def encode_answer(found: Answer, charset: str, codec: str, implicit: bool) -> bytes:
    """The identifier of one answer, in little endian with `implicit` VR or explicit;
    byte for byte what pydicom writes for encoding.raw_dataset (tested)."""
    parts = []
    wrote_charset = False
    for tag in sorted(found):
        if tag == SPECIFIC_CHARACTER_SET:
            continue
        if not wrote_charset and tag > SPECIFIC_CHARACTER_SET:
            parts.append(_element(SPECIFIC_CHARACTER_SET, "CS", charset, "ascii", implicit))
            wrote_charset = True
        vr, value = found[tag]
        parts.append(_element(tag, vr, value, codec, implicit))
    if not wrote_charset:
        parts.append(_element(SPECIFIC_CHARACTER_SET, "CS", charset, "ascii", implicit))
    return b"".join(parts)


def identifier(found: Answer, item_charset: str, target_charset: str, implicit: bool
               ) -> bytes:
    """One answer's identifier as server.response() would have pynetdicom encode it."""
    # server imports this module: its helpers are looked up here, when needed.
    from bridge.scp.server import answer_charset, response

    fitted, charset, codec = answer_charset(found, item_charset, target_charset)
    if codec is not None and supported(charset):
        return encode_answer(fitted, charset, codec, implicit)
    # ISO 2022 code extensions: pydicom encodes them, as on pynetdicom's path.
    data = encode(response(found, item_charset, target_charset, None), implicit, True)
    return data or b""


def shape(keys: tuple[Key, ...]) -> tuple:
    """What an answer's projection depends on besides the item: the returned keys, their
    VRs, and for each sequence the keys of its first requested item (or the whole item)."""
    out = []
    for k in keys:
        if not k.returned:
            continue
        if k.is_sequence and k.keyword:
            requested = [i for i in k.items if any(x.returned for x in i)]
            out.append((k.tag, k.keyword, k.vr, shape(requested[0]) if requested else None))
        else:
            out.append((k.tag, k.keyword, k.vr))
    return tuple(out)


class AnswerCache:
    """Encoded identifiers by (item, query shape, character set, transfer syntax).

    An entry is valid while the index still holds the same Entry object for the item: the
    index replaces an item's entry on every change, so a changed item is encoded anew.
    Bounded: past `limit` answers the oldest go first (about 1 KB each with their keys).
    """

    def __init__(self, limit: int = 50_000):
        self.limit = limit
        self._lock = threading.Lock()
        self._answers: dict[tuple, tuple[object, bytes]] = {}
        self._shapes: dict[tuple, int] = {}

    def shape_id(self, query_shape: tuple) -> int:
        """A small number for a query shape: hashing the shape itself per answer costs
        more than the cache saves."""
        with self._lock:
            found = self._shapes.get(query_shape)
            if found is None:
                if len(self._shapes) >= 1000:  # a client making up shapes: start over
                    self._shapes.clear()
                    self._answers.clear()
                found = self._shapes[query_shape] = len(self._shapes)
            return found

    def get(self, key: tuple, entry: object) -> bytes | None:
        hit = self._answers.get(key)
        if hit is not None and hit[0] is entry:
            return hit[1]
        return None

    def put(self, key: tuple, entry: object, data: bytes) -> None:
        with self._lock:
            self._answers.pop(key, None)
            self._answers[key] = (entry, data)
            while len(self._answers) > self.limit:
                del self._answers[next(iter(self._answers))]

    def __len__(self) -> int:
        return len(self._answers)


class ResponseWriter:
    """Pending C-FIND responses of one query, written to the association's socket."""

    def __init__(self, send: Callable[[bytes], None], context_id: int, message_id: int,
                 sop_class_uid: str, max_pdu: int):
        self._send = send
        self._context_id = context_id
        self._max_pdu = max_pdu
        self._command = pdata(context_id, pending_command_set(message_id, sop_class_uid),
                              True, max_pdu)
        self._buffer: list[bytes] = []
        self._size = 0
        self._written = 0
        self.failed = False

    def pending(self, identifier_bytes: bytes) -> None:
        self._buffer.append(self._command)
        data = pdata(self._context_id, identifier_bytes, False, self._max_pdu)
        self._buffer.append(data)
        self._size += len(self._command) + len(data)
        self._written += 1
        if self._written == 1 or self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buffer or self.failed:
            self._buffer.clear()
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        try:
            self._send(data)
        except OSError:
            self.failed = True  # the peer went away: pynetdicom sees it on its next send


def socket_of(assoc) -> socket.socket | None:
    """The association's connected socket, as pynetdicom's transport holds it."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    return sock if isinstance(sock, socket.socket) else None
