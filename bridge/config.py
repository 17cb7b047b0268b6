"""Configuration: config.yaml, validated by pydantic, overridable from the environment.

Every key can be overridden by an environment variable ``BRIDGE_<SECTION>__<KEY>``
(``BRIDGE_MLLP__PORT=2576``, ``BRIDGE_SINKS__FOLDER__ENABLED=false``, ``BRIDGE_DATA_DIR=/x``).
Relative paths are resolved against the folder of the configuration file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

ENV_PREFIX = "BRIDGE_"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MllpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=0, le=65535)
    max_message_bytes: int = Field(1_048_576, ge=1024)
    # HL7 term used when MSH-18 is empty or blank (see REFERENCE section 4).
    default_charset: str = "8859/1"
    # Bytes labelled as a single-byte charset that are valid UTF-8 with non-ASCII
    # characters are decoded as UTF-8: the commonest mislabelling in real feeds.
    detect_utf8: bool = True


class StoreConfig(_Section):
    path: Path | None = None  # default: <data_dir>/bridge.sqlite


class MappingsConfig(_Section):
    dir: Path = Path("mappings")


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
    log_queries: bool = True  # one INFO line per C-FIND with its keys
    max_associations: int = Field(32, ge=1)
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


class SinksConfig(_Section):
    folder: FolderSinkConfig = FolderSinkConfig()
    orthanc: OrthancSinkConfig = OrthancSinkConfig()


class Config(_Section):
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mllp: MllpConfig = MllpConfig()
    store: StoreConfig = StoreConfig()
    mappings: MappingsConfig = MappingsConfig()
    scp: ScpConfig = ScpConfig()
    sinks: SinksConfig = SinksConfig()

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
        except YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    _apply_env(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    return config.resolve_paths(base)
