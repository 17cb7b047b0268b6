"""A test double of Orthanc's `/worklists` REST API (orthanc-worklists plugin 0.9.2).

The plugin needs Orthanc 1.12.9 or newer, which Debian 12 does not package, so no test here
can start the real thing. This double follows the requests and responses recorded against a
real Orthanc 1.13.0 with that plugin, in ../shared/orthanc-worklists-api/ (files 02 to 12):
the same routes, status codes and JSON bodies; PUT /worklists/{id} as an upsert with the
client's ID and Force true by default; POST /worklists/create with a new UUID and the
ScheduledProcedureStepSequence checks unless Force; 404 "Worklist not found" on GET of an
unknown ID and 404 without Details on DELETE; 400 "Bad file format" on bad bodies; 500
"Unknown DICOM tag" on an unknown tag name; 405 with the recorded Allow headers; listings in
the Simplify, Short and Full formats; SpecificCharacterSet ISO_IR 192 and a made-up
StudyInstanceUID added when the body has none.

Not in the recordings, and marked so where they are built: the 500 of `fail_with` (Orthanc's
internal-error shape), the 401 of `require_headers` (Orthanc's answer when authentication is
enabled) and `study_arrived`, which removes items at once where Orthanc's
DeleteWorklistsOnStableStudy waits for StableAge and the housekeeper (recording 09).

Faults, for tests: `refuse()` closes the port (connections refused) and drops the open
connections until `accept()`; `fail_with(status)` answers every request with that error;
`delay` seconds are waited before each answer; `plugin = False` answers every /worklists
URI with a bare 404, as an Orthanc without the worklists plugin would (not in the
recordings). With `tls` (a server SSLContext) it serves HTTPS, as Orthanc does with
SslEnabled.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import Tag

_uid_counter = itertools.count(611049)


def _made_up_uid() -> str:
    # The shape of the UIDs DCMTK makes up inside Orthanc (recording 03).
    return (f"1.2.276.0.7230010.3.1.2.0.{os.getpid() % 100000}.{int(time.time())}."
            f"{next(_uid_counter)}")


def _tag_of(name: str) -> int | None:
    """A tag from a keyword or "gggg,eeee"; None when Orthanc would not know it."""
    if "," in name:
        try:
            group, element = name.split(",")
            return int(Tag(int(group, 16), int(element, 16)))
        except ValueError:
            return None
    tag = tag_for_keyword(name)
    return int(tag) if tag is not None else None


def _hex(tag: int) -> str:
    return f"{tag >> 16:04x},{tag & 0xFFFF:04x}"


class _BadRequest(Exception):
    def __init__(self, status: int, fields: dict):
        super().__init__(fields.get("Details", ""))
        self.status = status
        self.fields = fields


_BAD_FORMAT = {"HttpError": "Bad Request", "Message": "Bad file format",
               "OrthancError": "Bad file format", "OrthancStatus": 15}


def _normalise(tags: dict) -> dict:
    """Keys as keywords (hex keys of known tags too, as Orthanc lists them), recursively;
    raises the recorded 500 on an unknown tag name."""
    out = {}
    for name, value in tags.items():
        tag = _tag_of(name)
        if tag is None:
            raise _BadRequest(500, {"Details": name, "HttpError": "Internal Server Error",
                                    "Message": "Unknown DICOM tag",
                                    "OrthancError": "Unknown DICOM tag", "OrthancStatus": 27})
        key = keyword_for_tag(tag) or _hex(tag)
        if isinstance(value, list):
            out[key] = [_normalise(v) if isinstance(v, dict) else v for v in value]
        else:
            out[key] = value
    return out


def _check_sps(tags: dict) -> None:
    sps = tags.get("ScheduledProcedureStepSequence")
    hint = "  Use 'Force': true to bypass this check."
    if not isinstance(sps, list) or not sps:
        raise _BadRequest(400, {"Details": "'Tags' is missing a "
                                           f"'ScheduledProcedureStepSequence'.{hint}",
                                **_BAD_FORMAT})
    for field in ("Modality", "ScheduledProcedureStepStartDate"):
        if field not in sps[0]:
            raise _BadRequest(400, {"Details": "'ScheduledProcedureStepSequence' is missing "
                                               f"a '{field}'{hint}", **_BAD_FORMAT})


def _short(tags: dict, full: bool) -> dict:
    out = {}
    for name in sorted(tags, key=lambda n: _tag_of(n) or 0):
        value = tags[name]
        tag = _tag_of(name) or 0
        if isinstance(value, list):
            value = [_short(v, full) for v in value]
        if full:
            vr = dictionary_VR(tag) if keyword_for_tag(tag) else "UN"
            value = {"Name": name, "Type": "Sequence" if vr == "SQ" else "String",
                     "Value": value}
        out[_hex(tag)] = value
    return out


class OrthancDouble:
    """Run with ``with OrthancDouble() as orthanc:``; `orthanc.url` is its base URL."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.items: dict[str, dict] = {}  # ID -> Tags (keywords), in creation order
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) answered
        self.delay = 0.0
        self.fail_status: int | None = None
        self.require_headers: dict[str, str] | None = None
        self.plugin = True
        # Called with (ID, Tags) after each PUT or POST stored an item: bench/ times arrivals.
        self.on_store: Callable[[str, dict], None] | None = None
        self.in_flight = 0  # requests being answered now, and the most there were at once
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        # Bound, not listening, while refusing: connections are refused, yet the port stays
        # ours (the OS hands a bound port to no one else asking for a free one).
        self._placeholder: socket.socket | None = None

    # --- lifecycle and faults ------------------------------------------------------------

    def __enter__(self) -> OrthancDouble:
        self.accept()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refuse()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def accept(self) -> None:
        """Listen (again, on the same port): Orthanc is up, with the items it had."""
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True,
                                        name=f"orthanc-double-{self.port}")
        self._thread.start()

    def refuse(self) -> None:
        """Close the port and every open connection: Orthanc is down."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._server = None
        placeholder = socket.socket()
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.bind(("127.0.0.1", self.port))
        self._placeholder = placeholder

    def fail_with(self, status: int | None) -> None:
        self.fail_status = status

    def study_arrived(self, patient_id: str, study_uid: str) -> list[str]:
        """What DeleteWorklistsOnStableStudy does once the study is stable: remove the items
        with this PatientID and StudyInstanceUID. Returns the removed IDs."""
        with self.lock:
            gone = [i for i, t in self.items.items()
                    if t.get("PatientID") == patient_id and t.get("StudyInstanceUID") == study_uid]
            for i in gone:
                del self.items[i]
        return gone

    def count(self, method: str, path_prefix: str = "/worklists/") -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and p.startswith(path_prefix))

    # --- the API -------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Orthanc
            timeout = 1.0  # Orthanc closes a connection idle for 1 s ("Keep-Alive: timeout=1")

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm
                # and the client's delayed ACK add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with double.lock:
                    double._connections.add(self.connection)

            def finish(self) -> None:
                with double.lock:
                    double._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                double._handle(self, "GET")

            def do_PUT(self) -> None:
                double._handle(self, "PUT")

            def do_POST(self) -> None:
                double._handle(self, "POST")

            def do_DELETE(self) -> None:
                double._handle(self, "DELETE")

        return Handler

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._answer(h, method)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        url = urlsplit(h.path)
        path = url.path
        if self.delay:
            time.sleep(self.delay)
        if self.require_headers is not None and any(
                h.headers.get(k) != v for k, v in self.require_headers.items()):
            # Orthanc with AuthenticationEnabled (not in the recordings).
            self._send(h, method, path, 401, b"",
                       {"WWW-Authenticate": 'Basic realm="Orthanc Secure Area"'})
            return
        if not self.plugin:
            self._send(h, method, path, 404, b"", {})  # not in the recordings
            return
        if self.fail_status is not None:
            # Orthanc's shape of an internal error (not in the recordings).
            self._error(h, method, path, self.fail_status, {
                "HttpError": "Internal Server Error", "Message": "Internal error",
                "OrthancError": "Internal error", "OrthancStatus": -1})
            return
        try:
            status, answer, headers = self._route(method, path, parse_qs(url.query), body)
        except _BadRequest as exc:
            self._error(h, method, path, exc.status, exc.fields)
            return
        data = b"" if answer is None else json.dumps(
            answer, indent=3, separators=(",", " : "), sort_keys=False).encode("utf-8")
        self._send(h, method, path, status, data, headers)

    def _route(self, method: str, path: str, query: dict, body: bytes
               ) -> tuple[int, object, dict[str, str]]:
        parts = path.rstrip("/").split("/")[1:] if path != "/worklists/" else ["worklists"]
        if parts[:1] != ["worklists"] or len(parts) > 2:
            return 404, None, {}
        if len(parts) == 1:
            if method != "GET":
                return 405, None, {"Allow": "GET"}
            fmt = self._format(query)
            with self.lock:
                return 200, [self._show(i, t, fmt) for i, t in self.items.items()], {}
        worklist_id = parts[1]
        if worklist_id == "create":
            if method != "POST":
                return 405, None, {"Allow": "POST"}
            new_id = str(uuid.uuid4())
            self._store(new_id, body, force_default=False)
            return 200, {"ID": new_id, "Path": f"/worklists/{new_id}"}, {}
        if method == "PUT":
            self._store(worklist_id, body, force_default=True)
            return 200, {"ID": worklist_id, "Path": f"/worklists/{worklist_id}"}, {}
        if method == "GET":
            fmt = self._format(query)
            with self.lock:
                tags = self.items.get(worklist_id)
                if tags is not None:
                    return 200, self._show(worklist_id, tags, fmt), {}
            raise _BadRequest(404, {"Details": "Worklist not found", **_NOT_FOUND})
        if method == "DELETE":
            with self.lock:
                if self.items.pop(worklist_id, None) is not None:
                    return 200, {}, {}
            raise _BadRequest(404, _NOT_FOUND)
        return 405, None, {"Allow": "DELETE,GET"}  # as recorded (06)

    @staticmethod
    def _format(query: dict) -> str:
        fmt = (query.get("format") or ["Simplify"])[0]
        if fmt not in ("Simplify", "Short", "Full"):
            raise _BadRequest(400, {"HttpError": "Bad Request", "Message": "Parameter out of range",
                                    "OrthancError": "Parameter out of range",
                                    "OrthancStatus": 3})
        return fmt

    @staticmethod
    def _show(worklist_id: str, tags: dict, fmt: str) -> dict:
        if fmt == "Simplify":
            shown = json.loads(json.dumps(tags, sort_keys=True))
        else:
            shown = _short(tags, full=fmt == "Full")
        return {"ID": worklist_id, "Tags": shown}

    def _store(self, worklist_id: str, body: bytes, force_default: bool) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            raise _BadRequest(400, {"Details": "A JSON payload was expected",
                                    **_BAD_FORMAT}) from None
        tags = request.get("Tags") if isinstance(request, dict) else None
        if not isinstance(tags, dict):
            raise _BadRequest(400, {"Details": "'Tags' field is missing or not a JSON object",
                                    **_BAD_FORMAT})
        if not request.get("Force", force_default):
            _check_sps(tags)
        tags = _normalise(tags)
        tags.setdefault("SpecificCharacterSet", "ISO_IR 192")
        if not tags.get("StudyInstanceUID"):
            tags["StudyInstanceUID"] = _made_up_uid()
        with self.lock:
            self.items[worklist_id] = tags
        if self.on_store is not None:
            self.on_store(worklist_id, tags)

    def _error(self, h: BaseHTTPRequestHandler, method: str, path: str, status: int,
               fields: dict) -> None:
        body = {**fields, "HttpStatus": status, "Method": method, "Uri": path}
        data = json.dumps(dict(sorted(body.items())), indent="\t",
                          separators=(",", " : ")).encode("utf-8") + b"\n"
        self._send(h, method, path, status, data, {})

    def _send(self, h: BaseHTTPRequestHandler, method: str, path: str, status: int,
              data: bytes, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append((method, path, status))
        try:
            h.send_response(status)
            if data:
                h.send_header("Content-Type", "application/json; charset=utf-8")
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Connection", "keep-alive")
            h.send_header("Keep-Alive", "timeout=1")
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass  # the client went away (it timed out, or refuse() cut the connection)


_NOT_FOUND = {"HttpError": "Not Found", "Message": "Unknown resource",
              "OrthancError": "Unknown resource", "OrthancStatus": 17}
