"""Configuration: config.yaml, validated by pydantic, overridable from the environment.

Every key can be overridden by an environment variable ``BRIDGE_<SECTION>__<KEY>``
(``BRIDGE_MLLP__PORT=2576``, ``BRIDGE_SINKS__FOLDER__ENABLED=false``, ``BRIDGE_DATA_DIR=/x``).
Relative paths are resolved against the folder of the configuration file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

ENV_PREFIX = "BRIDGE_"
# The shipped configuration and mappings, inside the package (in a checkout, links to the
# top-level config.yaml and mappings/, which stay the single source): `serve` without a
# configuration runs on them, and `init` copies them.
PACKAGED_CONFIG = Path(__file__).resolve().parent / "defaults" / "config.yaml"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key."""

    phi_free = True  # names files and keys, never patient data (logprivacy.py)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Section):
    enabled: bool = False
    certfile: Path | None = None  # the listener's certificate chain (PEM)
    keyfile: Path | None = None  # its private key (PEM); None: the key is in certfile
    ca_file: Path | None = None  # CAs that sign client certificates
    require_client_cert: bool = False
    # A handshake must be done in `handshake_timeout` s; at most `max_handshakes` run at once
    # (a peer's connections count against mllp.max_connections_per_peer before it starts).
    handshake_timeout: float = Field(10.0, gt=0, allow_inf_nan=False)
    max_handshakes: int = Field(32, ge=1, le=10_000)

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if self.enabled and self.certfile is None:
            raise ValueError("certfile is required when TLS is enabled")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("ca_file is required to check client certificates")
        return self


class MllpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=0, le=65535)
    max_message_bytes: int = Field(1_048_576, ge=1024)
    # HL7 term used when MSH-18 is empty or blank (see REFERENCE section 4).
    default_charset: str = "8859/1"
    # Bytes labelled as a single-byte charset that are valid UTF-8 with non-ASCII
    # characters are decoded as UTF-8: the commonest mislabelling in real feeds.
    detect_utf8: bool = True
    # Floods and slow senders (README "Limits"). Beyond max_connections, a newcomer takes
    # the place of the oldest waiting connection of the peer holding the most, if that peer
    # holds more than the newcomer would; else it is closed at once.
    max_connections: int = Field(64, ge=1, le=10_000)
    # Connections one peer address may hold; a further one replaces its oldest waiting one.
    max_connections_per_peer: int = Field(8, ge=1, le=10_000)
    # Addresses or CIDR ranges allowed to connect, checked before a byte is read; []: any.
    allowed_peers: list[str] = []
    # Seconds a connection may take to deliver its next complete frame, or to take an
    # ACK, before it is closed; 0 waits for ever. Frees the places of idle senders.
    idle_timeout: float = Field(300.0, ge=0, allow_inf_nan=False)
    # Seconds from the first byte of a frame to its end block (a trickler is closed).
    frame_timeout: float = Field(30.0, gt=0, allow_inf_nan=False)
    # Structure validation (hl7apy) before mapping: AR with ERR naming the location.
    # `strict` applies it to every sender, `strict_senders` to those MSH-3 values only.
    strict: bool = False
    strict_senders: list[str] = []
    # Structural limits (AR naming the limit): the work per message grows with them.
    max_segments: int = Field(5000, ge=1)  # segments in one message
    max_groups: int = Field(1000, ge=1)  # order (or patient) groups in one message
    tls: TlsConfig = TlsConfig()

    @field_validator("strict_senders", "allowed_peers", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        # From the environment the list comes as one string: "RIS1,RIS2".
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("allowed_peers")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR range "
                                 "(e.g. 10.1.2.3, 10.1.0.0/16, fd00::/8)") from None
        return value


class MetricsConfig(_Section):
    # /healthz and Prometheus /metrics over plain HTTP: keep it on a local address.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9102, ge=0, le=65535)


# --- HTTP: console, REST API, DICOMweb, /metrics and /healthz (bridge/web/) -------------
class HttpTlsConfig(_Section):
    certfile: Path | None = None  # PEM certificate chain; set both to serve HTTPS
    keyfile: Path | None = None  # its private key (PEM); None: the key is in certfile


class HttpConfig(_Section):
    enabled: bool = True  # one server for the console, /api, /dicomweb, /metrics, /healthz
    host: str = "127.0.0.1"  # 0.0.0.0 to serve other machines (use TLS then)
    port: int = Field(8080, ge=0, le=65535)
    tls: HttpTlsConfig = HttpTlsConfig()
    session_minutes: float = Field(480, gt=0)  # a console session expires after this
    max_failed_logins: int = Field(5, ge=1)  # per user and address in 15 minutes, then 429
    # The old `metrics.enabled|host|port` keys, where given, set these (start-up says so).
    _notes: list[str] = PrivateAttr(default_factory=list)


def _metrics_aliases(data: dict, environ: dict[str, str]) -> list[str]:
    """`metrics.*` (before the HTTP server replaced the metrics listener) set `http.*`,
    unless the environment sets that http key itself. Returns the start-up notes."""
    old = data.get("metrics")
    if not isinstance(old, dict):
        return []
    http = data.setdefault("http", {})
    if not isinstance(http, dict):
        return []
    notes = []
    for key in ("enabled", "host", "port"):
        if key in old and f"{ENV_PREFIX}HTTP__{key.upper()}" not in environ:
            http[key] = old[key]
            notes.append(f"metrics.{key} is now http.{key}: using {old[key]}")
    return notes


class StoreConfig(_Section):
    path: Path | None = None  # default: <data_dir>/bridge.sqlite
    # sqlite:///path (the default, from `path`) or postgresql://user:password@host:5432/db
    # to share one database between several active instances (README: High availability).
    url: str | None = Field(None, pattern=r"^(sqlite:///|postgres(ql)?://)")
    # This instance's name in /healthz and the journal (default: the host name).
    instance: str | None = None


class MappingsConfig(_Section):
    dir: Path = Path("mappings")
    # Seconds between checks of the folder for changed mappings (0: reload on SIGHUP only).
    watch_seconds: float = Field(2.0, ge=0)


WorklistStatus = Literal["SCHEDULED", "ARRIVED", "STARTED", "COMPLETED", "DISCONTINUED",
                         "CANCELED"]


def _known_charset(value: str | None) -> str | None:
    from pydicom.charset import python_encoding

    if value and value.strip() != "query" and value.strip() not in python_encoding:
        raise ValueError(f"unknown DICOM character set {value!r} (e.g. ISO_IR 100, "
                         "ISO_IR 192, or query)")
    return value


def _comma_list(value: object) -> object:
    # From the environment a list comes as "CT01,MR02".
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class ScpAeOptions(_Section):
    """Options of the built-in SCP that may differ per calling AE title."""

    # Where the query names no ScheduledStationAETitle, match the calling AE title
    # (Orthanc's FilterIssuerAet).
    fill_station_ae: bool | None = None
    # Answer at most this many items, then end with status FE00 (0: no limit).
    max_answers: int | None = Field(None, ge=0)
    visible_statuses: list[WorklistStatus] | None = None
    # DICOM term for the answers (e.g. "ISO_IR 100"); "" keeps each item's own; "query":
    # the query's own SpecificCharacterSet when it declares one.
    response_charset: str | None = None
    pn_case_insensitive: bool | None = None

    _charset = field_validator("response_charset")(_known_charset)
    _lists = field_validator("visible_statuses", mode="before")(_comma_list)


class ScpConfig(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    ae_title: str = Field("BRIDGE_MWL", min_length=1, max_length=16)
    # Calling AE titles allowed to associate; empty: any.
    allowed_calling_aes: list[str] = []
    fill_station_ae: bool = False
    max_answers: int = Field(0, ge=0)
    visible_statuses: list[WorklistStatus] = ["SCHEDULED", "ARRIVED"]
    response_charset: str = ""
    pn_case_insensitive: bool = False
    # One INFO line per C-FIND: its keys, answer count and time (values only with log_phi).
    log_queries: bool = True
    # Each association is two threads: a sane ceiling, not 100,000,000.
    max_associations: int = Field(32, ge=1, le=1000)
    # Connections one peer address may hold at once; more are closed on accept.
    max_associations_per_peer: int = Field(8, ge=1, le=1000)
    # Seconds a connection may take to send its A-ASSOCIATE-RQ (and to close after release).
    acse_timeout: float = Field(10, gt=0, le=600)
    # Seconds an association may stay silent before it is aborted.
    network_timeout: float = Field(60, gt=0, le=3600)
    # CPU seconds one C-FIND may spend searching; then it ends with A700 (out of resources).
    max_query_seconds: float = Field(10, gt=0, le=3600)
    # Overrides per calling AE title (compared without case): {CT01: {max_answers: 50}}.
    calling_aes: dict[str, ScpAeOptions] = {}

    _charset = field_validator("response_charset")(_known_charset)

    _lists = field_validator("allowed_calling_aes", "visible_statuses",
                             mode="before")(_comma_list)


class FolderSinkConfig(_Section):
    enabled: bool = True
    path: Path | None = None  # default: <data_dir>/worklists
    # flat: every .wl in `path` (Orthanc's ModalityWorklists plugin, wlmscpfs with
    # `path` as its AE folder). by_station_ae: `path/<ScheduledStationAETitle>/`, the
    # layout of wlmscpfs -dfp <path> when each station calls its own AE title.
    layout: Literal["flat", "by_station_ae"] = "flat"
    # wlmscpfs read-locks <folder>/lockfile; the sink write-locks it while it changes files.
    lockfile: bool = True


class OrthancSinkConfig(_Section):
    enabled: bool = False
    url: str = "http://127.0.0.1:8042"
    # Authentication: HTTP basic (Orthanc's RegisteredUsers) when `username` is set, a bearer
    # token (`Authorization: Bearer ...`), and/or extra headers such as an API key that a
    # reverse proxy or Orthanc's authorization plugin checks.
    username: str | None = None
    password: str | None = None
    token: str | None = None
    headers: dict[str, str] = {}
    # TLS: verify the server certificate (against `ca_bundle` when set, else the system CAs).
    verify_tls: bool = True
    ca_bundle: Path | None = None
    connect_timeout: float = Field(5.0, gt=0)
    timeout: float = Field(30.0, gt=0)  # a whole request, once connected
    # Worklist IDs are <id_prefix><uuid5 of the item key>: resync deletes only IDs with
    # this prefix, so items other programs created in Orthanc are left alone.
    id_prefix: str = Field("hl7wb-", pattern=r"^[A-Za-z0-9_.-]*$")
    # Delivery: an item Orthanc refuses is retried with exponential backoff between
    # `min_backoff` and `max_backoff` seconds, and marked dead after `max_attempts`.
    # While Orthanc cannot be reached at all, no item is charged an attempt.
    max_attempts: int = Field(20, ge=1)
    min_backoff: float = Field(2.0, gt=0)
    max_backoff: float = Field(300.0, gt=0)
    # Requests in flight at once while a batch of changes goes out (each on its own
    # kept-alive connection): one at a time, the sink fell seconds behind a burst.
    parallel_requests: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _one_authorization(self) -> OrthancSinkConfig:
        if self.username and self.token:
            raise ValueError("set username/password or token, not both (both would send an "
                             "Authorization header)")
        return self


class SinksConfig(_Section):
    folder: FolderSinkConfig = FolderSinkConfig()
    orthanc: OrthancSinkConfig = OrthancSinkConfig()


class OrderControlRule(_Section):
    """One row of the order-control table: what an ORC-1_ORC-5 pair does."""

    effect: Literal["replace", "status"]
    status: Literal["SCHEDULED", "ARRIVED", "STARTED", "COMPLETED", "DISCONTINUED", "CANCELED"]
    # The status sticks (later order messages leave the item alone). Default: true for
    # COMPLETED, DISCONTINUED and CANCELED, except for HD (hold) rows.
    final: bool | None = None


# A table row, or "reject" to take a default row out (the pair then gets AE).
OrderControlTable = dict[str, OrderControlRule | Literal["reject"]]


class SenderLifecycle(_Section):
    order_control: OrderControlTable = {}
    xo_unknown_order: Literal["create", "reject"] | None = None
    # Overrides of the lifecycle's status_unknown_order and reopen_final for this sender.
    status_unknown_order: Literal["accept", "reject"] | None = None
    reopen_final: bool | None = None


class LifecycleConfig(_Section):
    # Statuses a modality sees (folder, Orthanc, built-in SCP); others are removed there.
    visible_statuses: list[Literal["SCHEDULED", "ARRIVED", "STARTED", "COMPLETED",
                                   "DISCONTINUED", "CANCELED"]] = ["SCHEDULED", "ARRIVED"]
    # Rows added to, or replacing rows of, the default table (README: "Order control").
    order_control: OrderControlTable = {}
    # XO (change) for an order the bridge has never seen: create it, or answer AE.
    xo_unknown_order: Literal["create", "reject"] = "create"
    # A status change (CA, DC, SC, HD, RL...) for an order the bridge does not have: AA
    # with "no such order" in the journal (accept), or AE 204 (reject).
    status_unknown_order: Literal["accept", "reject"] = "accept"
    # A later order message may change an item in a final status (COMPLETED, DISCONTINUED,
    # CANCELED): false keeps finished orders finished (AA, the journal says why).
    reopen_final: bool = False
    # Per sender, keyed by MSH-3 (sending application): overrides of the above.
    senders: dict[str, SenderLifecycle] = {}
    # ADT^A10 (patient arriving) sets the patient's scheduled items to ARRIVED.
    arrive_on_a10: bool = False
    # Live items whose scheduled start is older than this are taken off the worklist
    # (0: never). Checked every `housekeeping_interval_s`.
    expire_after_hours: float = Field(0, ge=0)
    housekeeping_interval_s: float = Field(600, gt=0)


class JournalConfig(_Section):
    # Processed and duplicate messages older than this are deleted from the journal;
    # failed ones stay until replayed or deleted (0: keep everything).
    retention_days: float = Field(90, ge=0)


# --- status back to the RIS (bridge/outbound/, README "Status back to the RIS") ----------

class RisTlsConfig(_Section):
    enabled: bool = False  # MLLP over TLS to the RIS
    ca_file: Path | None = None  # CAs that sign the RIS's certificate (None: system CAs)
    certfile: Path | None = None  # a client certificate to present, when the RIS wants one
    keyfile: Path | None = None  # its private key (None: inside certfile)
    check_hostname: bool = True  # the certificate must name ris.host


class RisEvent(_Section):
    """What one MPPS event sends: the ORC-1 and ORC-5 codes (profile sources event.control,
    event.status); `send: false` sends nothing for it."""

    send: bool = True
    control: str = Field("SC", pattern=r"^[A-Z]{2}$")
    status: str = Field("", pattern=r"^[A-Z]{0,2}$")


class RisConfig(_Section):
    enabled: bool = False
    # Deliveries are kept per destination: "ris" is this one (more may follow).
    name: str = Field("ris", pattern=r"^[A-Za-z0-9_.-]+$")
    host: str = "127.0.0.1"
    port: int = Field(2576, ge=1, le=65535)
    tls: RisTlsConfig = RisTlsConfig()
    # Outbound profile (a file of mappings/outbound/, or a path) that builds each message.
    profile: str = "outbound-orm-status"
    charset: str = "8859/1"  # MSH-18 of the messages and the bytes they are written in
    sending_application: str = "HL7WB"  # MSH-3
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    processing_id: Literal["P", "T", "D"] = "P"  # MSH-11
    connect_timeout: float = Field(10.0, gt=0)
    ack_timeout: float = Field(30.0, gt=0)  # no ACK by then: retried later
    # Retries while the RIS is down or silent: exponential backoff between these (seconds).
    min_backoff: float = Field(2.0, gt=0)
    max_backoff: float = Field(300.0, gt=0)
    # MPPS event -> ORC-1 / ORC-5. DISCONTINUED is a status change (SC) with ORC-5 DC, not
    # a discontinue request: the RIS decides what happens to its order.
    in_progress: RisEvent = RisEvent(control="SC", status="IP")
    completed: RisEvent = RisEvent(control="SC", status="CM")
    discontinued: RisEvent = RisEvent(control="SC", status="DC")

    @field_validator("charset")
    @classmethod
    def _known(cls, value: str) -> str:
        from bridge.decoding import UnknownCharset, lookup_charset

        try:
            lookup_charset(value)
        except UnknownCharset:
            raise ValueError(f"unknown HL7 character set {value!r} (e.g. 8859/1, "
                             "UNICODE UTF-8)") from None
        return value


class Config(_Section):
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # false: log lines carry no message content (names, exception texts quoting values).
    log_phi: bool = False
    # Longer log lines (a message, or one line of a traceback) are cut to this length.
    log_max_line: int = Field(2000, ge=200)
    mllp: MllpConfig = MllpConfig()
    store: StoreConfig = StoreConfig()
    mappings: MappingsConfig = MappingsConfig()
    scp: ScpConfig = ScpConfig()
    sinks: SinksConfig = SinksConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    journal: JournalConfig = JournalConfig()
    ris: RisConfig = RisConfig()  # status back to the RIS (off by default)
    metrics: MetricsConfig = MetricsConfig()
    http: HttpConfig = HttpConfig()

    @property
    def store_path(self) -> Path:
        return self.store.path or self.data_dir / "bridge.sqlite"

    @property
    def folder_path(self) -> Path:
        return self.sinks.folder.path or self.data_dir / "worklists"

    def resolve_paths(self, base: Path) -> Config:
        """Make relative paths relative to `base` (the config file's folder)."""

        def rel(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else (base / p)

        self.data_dir = rel(self.data_dir)
        self.store.path = rel(self.store.path)
        self.mappings.dir = rel(self.mappings.dir)
        self.sinks.folder.path = rel(self.sinks.folder.path)
        tls = self.mllp.tls
        tls.certfile, tls.keyfile, tls.ca_file = (rel(tls.certfile), rel(tls.keyfile),
                                                  rel(tls.ca_file))
        ris = self.ris.tls
        ris.ca_file, ris.certfile, ris.keyfile = (rel(ris.ca_file), rel(ris.certfile),
                                                  rel(ris.keyfile))
        self.sinks.orthanc.ca_bundle = rel(self.sinks.orthanc.ca_bundle)
        self.http.tls.certfile, self.http.tls.keyfile = (rel(self.http.tls.certfile),
                                                         rel(self.http.tls.keyfile))
        return self


def _apply_env(data: dict, environ: dict[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX):].lower().split("__")
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        # pydantic converts "2576" to int and "false" to bool itself.
        node[keys[-1]] = value


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


# --- checks beyond types: each names its key; run at start-up (and by every command) ----

# RFC 1123 labels, plus "_": container service names (orthanc_1) resolve in practice.
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
                        r"(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def _host_problem(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    # A dotted string of numbers that is no IP address (999.1.1.1) is no host name either.
    if _HOST_NAME.fullmatch(host) and not host.replace(".", "").isdigit():
        return None
    return f"{host!r} is neither an IP address nor a host name (0.0.0.0: every interface)"


def _ae_problem(title: str) -> str | None:
    # PS3.5 AE VR: at most 16 characters of the default repertoire, no backslash (the value
    # delimiter), no control characters, not only spaces.
    if not title.strip() or len(title) > 16 or "\\" in title or \
            any(ord(c) < 32 or ord(c) > 126 for c in title):
        return (f"{title!r} is not a valid AE title (1 to 16 printable ASCII characters, "
                "no backslash)")
    return None


def _semantic_problems(config: Config) -> list[str]:
    """What pydantic's types let through but would break at run time, as 'key: why'."""
    from bridge.decoding import UnknownCharset, lookup_charset

    problems: list[str] = []
    for key, host in (("mllp.host", config.mllp.host), ("scp.host", config.scp.host),
                      ("metrics.host", config.metrics.host)):
        if (why := _host_problem(host)) is not None:
            problems.append(f"{key}: {why}")
    scp = config.scp
    titles = [("scp.ae_title", scp.ae_title)]
    titles += [("scp.allowed_calling_aes", t) for t in scp.allowed_calling_aes]
    titles += [(f"scp.calling_aes.{t}", t) for t in scp.calling_aes]
    problems += [f"{key}: {why}" for key, t in titles if (why := _ae_problem(t)) is not None]
    try:
        lookup_charset(config.mllp.default_charset)
    except UnknownCharset:
        problems.append(f"mllp.default_charset: unknown HL7 character set "
                        f"{config.mllp.default_charset!r} (e.g. 8859/1, UNICODE UTF-8, ASCII)")
    statuses = [("lifecycle.visible_statuses", config.lifecycle.visible_statuses),
                ("scp.visible_statuses", scp.visible_statuses)]
    statuses += [(f"scp.calling_aes.{t}.visible_statuses", o.visible_statuses)
                 for t, o in scp.calling_aes.items()]
    problems += [f"{key}: empty: no item would ever be shown (default: SCHEDULED, ARRIVED)"
                 for key, value in statuses if value is not None and not value]
    problems += [f"sinks.orthanc.url: {why}" for why in _url_problems(config.sinks.orthanc.url)]
    return problems


def _url_problems(url: str) -> list[str]:
    import httpx

    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        return [f"{url!r} is not a URL: {exc}"]
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return [f"{url!r} is not an http:// or https:// URL with a host"]
    why = _host_problem(parsed.host)
    if why is None and port is not None and not 0 < port < 65536:
        why = f"port {port} out of range"
    return [] if why is None else [f"{url!r}: {why}"]


def check_paths(config: Config) -> None:
    """At start-up: the folders and files the bridge writes are usable; ConfigError naming
    the key otherwise (rather than a traceback from SQLite or the folder sink)."""
    problems: list[str] = []

    def folder(key: str, path: Path) -> None:
        if any(p.startswith(f"{key}: ") for p in problems):
            return  # one line per key: the store's and the sink's folders share data_dir
        if path.exists() and not path.is_dir():
            problems.append(f"{key}: {path} is a file, not a folder")
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"{key}: cannot create the folder {path}: {exc.strerror}")
            return
        if not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"{key}: {path}: the bridge may not write there")

    store_key = "store.path" if config.store.path is not None else "data_dir"
    store = config.store_path
    if store.is_dir():
        problems.append(f"{store_key}: {store} is a folder; store.path names the SQLite file")
    else:
        folder(store_key, store.parent)
    if config.sinks.folder.enabled:
        folder("sinks.folder.path" if config.sinks.folder.path is not None else "data_dir",
               config.folder_path)
    if not config.mappings.dir.is_dir():
        problems.append(f"mappings.dir: {config.mappings.dir} is not a folder")
    if problems:
        raise ConfigError("\n".join(problems))


def default_data_dir(environ: dict[str, str]) -> Path:
    """Where a bridge running on the packaged defaults keeps its data: systemd's
    StateDirectory, else the user's XDG data folder."""
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hl7-worklist-bridge"


def find_config(path: Path | None) -> Path | None:
    """The configuration a command uses: the one given, else ./config.yaml when there is
    one, else None (the packaged defaults)."""
    if path is not None:
        return path
    return Path("config.yaml") if Path("config.yaml").is_file() else None


def load_packaged_config(environ: dict[str, str] | None = None) -> Config:
    """The shipped configuration and mappings, with data in default_data_dir() unless
    BRIDGE_DATA_DIR says otherwise."""
    environ = dict(os.environ) if environ is None else environ
    config = load_config(PACKAGED_CONFIG, environ)
    if "BRIDGE_DATA_DIR" not in environ:
        config.data_dir = default_data_dir(environ)
    return config


def load_config(path: Path | None, environ: dict[str, str] | None = None) -> Config:
    """Load and validate the configuration; raise ConfigError naming the bad key."""
    environ = dict(os.environ) if environ is None else environ
    data: dict = {}
    base = Path.cwd()
    source = "defaults"
    if path is not None:
        source = str(path)
        base = path.resolve().parent
        try:
            loaded = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[:exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{exc.object[exc.start]:02x}); "
                              "save the file as UTF-8") from None
        except YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    _apply_env(data, environ)
    http_notes = _metrics_aliases(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    problems = _semantic_problems(config)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    config.http._notes = http_notes
    return config.resolve_paths(base)
