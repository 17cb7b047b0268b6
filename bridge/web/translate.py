"""`POST /api/translate`: the mapping dry run (`hl7-worklist-bridge translate`) over HTTP,
with the running bridge's mappings or with a mapping text not saved yet."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from bridge.decoding import DecodeError, UnknownCharset, decode
from bridge.mapping import dryrun
from bridge.mapping.loader import MappingError, load_profiles
from bridge.store import User
from bridge.web.auth import viewer

router = APIRouter(tags=["translate"])


class TraceLine(BaseModel):
    # The mapping's trace may grow fields (as the CLI's does): they pass through.
    model_config = ConfigDict(extra="allow")

    attribute: str
    value: object
    source: str  # the HL7 path (or value, template, uid) the attribute came from
    transforms: list[str]
    warnings: list[str]


class Translation(BaseModel):
    profile: str | None = None
    profile_file: str | None = None
    items: list[dict] = []  # DICOM JSON (PS3.18 F.2), one object per item
    traces: list[list[TraceLine]] = []  # per item, per attribute
    warnings: list[str] = []
    notes: list[str] = []  # per order: what the bridge would do
    error: str | None = None  # why the bridge would refuse the message; file:line inside


def run(bridge, raw: bytes, profile: str | None = None, mapping: str | None = None,
        mapping_file: str = "playground.yaml") -> Translation:
    """The dry run. `mapping`: a profile's YAML text, used in place of the file
    `mapping_file` of the mapping folder (or beside them) without saving it."""
    config = bridge.config
    if mapping is not None:
        try:
            profiles = _with_text(config.mappings.dir, mapping, mapping_file)
        except MappingError as exc:
            return Translation(error=f"mapping error: {exc}")
    else:
        profiles = bridge.profiles
    if profile:
        profiles = [p for p in profiles if p.name == profile]
        if not profiles:
            return Translation(error=f"no profile named {profile!r}")
    try:
        dry = dryrun.translate(raw, profiles, default_charset=config.mllp.default_charset,
                               detect_utf8=config.mllp.detect_utf8)
    except dryrun.MessageError as exc:
        return Translation(error=str(exc))
    traces = [[TraceLine(**asdict(e)) for e in trace.entries]
              for order in dry.mapped.orders for trace in order.traces]
    return Translation(profile=dry.profile.name, profile_file=str(dry.profile.file),
                       items=json.loads(dryrun.as_json(dry)), traces=traces,
                       warnings=list(dry.mapped.warnings), notes=dry.notes,
                       error="an order could not be mapped (see notes)" if dry.failed
                       else None)


def _with_text(folder: Path, text: str, name: str):
    """The mapping folder's profiles with `name` replaced by `text`, loaded from a copy:
    errors name `name` and its line, as they would once saved."""
    if not name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name:
        raise MappingError([f"{name}: a mapping file name ends in .yaml, without a folder"])
    with tempfile.TemporaryDirectory(prefix="bridge-playground-") as tmp:
        copy = Path(tmp) / "mappings"
        shutil.copytree(folder, copy)
        (copy / name).write_text(text, encoding="utf-8")
        try:
            return load_profiles(copy)
        except MappingError as exc:
            raise MappingError([p.replace(str(copy), str(folder)) for p in exc.problems]
                               ) from None


def segments(raw: bytes, config) -> list[list[str]]:
    """The message decoded and split into segments and fields, for display. MSH keeps
    HL7's numbering: its field 1 is the separator itself."""
    try:
        text = decode(raw, default_charset=config.mllp.default_charset,
                      detect_utf8=config.mllp.detect_utf8).text
    except (DecodeError, UnknownCharset):
        text = raw.decode("latin-1")
    sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    out = []
    for line in text.replace("\n", "\r").split("\r"):
        if not line:
            continue
        fields = line.split(sep)
        if fields[0] == "MSH":
            fields = ["MSH", sep, *fields[1:]]
        out.append(fields)
    return out


@router.post("/api/translate", openapi_extra={
    "requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def translate(request: Request, profile: str | None = None,
                    mapping_file: str = "playground.yaml",
                    user: User = viewer) -> Translation:
    """The body is one HL7 message (text/plain). For an unsaved mapping, send JSON instead:
    {"message": "...", "mapping": "<YAML>", "mapping_file": "x.yaml", "profile": "..."}."""
    body = await request.body()
    mapping = None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = json.loads(body)
            body = str(data["message"]).encode("utf-8")
            mapping = data.get("mapping")
            profile = data.get("profile") or profile
            mapping_file = data.get("mapping_file") or mapping_file
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"detail": "JSON body: {message, mapping?, profile?}"}, 422)
    result = run(request.app.state.bridge, body.replace(b"\n", b"\r"), profile, mapping,
                 mapping_file)
    return JSONResponse(result.model_dump(mode="json"), 422 if result.error else 200)
