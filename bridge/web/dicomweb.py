"""DICOMweb Modality Worklist search (PS3.18, Supplement 246, "MWL-RS"):
`GET /dicomweb/modality-scheduled-procedure-steps{?search*}`, answering
`application/dicom+json`.

The URL's parameters become a C-FIND identifier (`scp.query.Key`s) and go through the
built-in SCP's own `WorklistScp.find`: the same index, the same matching (PS3.4 C.2.2.2),
the same visible statuses, the same projection. One engine; a DICOMweb client and a
modality asking the same keys get the same items.

- `{attribute}={value}`: keyword or tag (`PatientName`, `00100010`); nested attributes of a
  sequence with a dot: `ScheduledProcedureStepSequence.Modality=CT`. A UID list may be
  comma-separated (QIDO style) or backslash-separated (C-FIND style).
- `includefield`: more attributes to return (repeatable, comma-separated); `all` returns
  the whole scheduled procedure step too.
- `limit`, `offset`: paging over the matches.
- `fuzzymatching=true`: not offered; answered with a `Warning: 299` header, as PS3.18 asks.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from bridge.scp.query import Key, Query
from bridge.store import User
from bridge.web.auth import viewer

router = APIRouter(tags=["dicomweb"])
MEDIA_TYPE = "application/dicom+json"
CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching"})

# Returned by default (the MWL C-FIND return keys of type 1 and 2 that modalities use).
DEFAULT_TOP = ["AccessionNumber", "ReferringPhysicianName", "PatientName", "PatientID",
               "PatientBirthDate", "PatientSex", "StudyInstanceUID", "RequestedProcedureID",
               "RequestedProcedureDescription", "RequestedProcedurePriority"]
DEFAULT_STEP = ["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID",
                "ScheduledProcedureStepDescription", "ScheduledPerformingPhysicianName",
                "ScheduledStationName"]
SPS = "ScheduledProcedureStepSequence"


class BadQuery(ValueError):
    pass


def _attribute(name: str) -> tuple[int, str, str]:
    """Tag, keyword and VR of a keyword or an 8-digit hex tag."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag)
    else:
        tag, keyword = tag_for_keyword(name), name
    if tag is None or not keyword:
        raise BadQuery(f"unknown attribute {name!r}")
    return tag, keyword, dictionary_VR(tag)


# A tree of requested attributes: keyword -> value (str) or, for a sequence, a subtree.
Tree = dict[str, "str | Tree"]


def _put(tree: Tree, path: list[str], value: str | None) -> None:
    _, keyword, vr = _attribute(path[0])
    if len(path) > 1:
        if vr != "SQ":
            raise BadQuery(f"{keyword} is not a sequence")
        sub = tree.get(keyword)
        if not isinstance(sub, dict):
            sub = tree[keyword] = {}
        _put(sub, path[1:], value)
        return
    if vr == "SQ":
        tree.setdefault(keyword, {})  # the whole sequence (an empty item asks for all)
        return
    if value is not None:
        tree[keyword] = value
    else:
        tree.setdefault(keyword, "")


def _keys(tree: Tree) -> tuple[Key, ...]:
    keys = []
    for keyword, value in tree.items():
        tag, _, vr = _attribute(keyword)
        if isinstance(value, dict):
            keys.append(Key(tag, keyword, "SQ", "", (_keys(value),)))
        else:
            keys.append(Key(tag, keyword, vr, value))
    return tuple(keys)


def build_query(params: list[tuple[str, str]]) -> Query:
    """The C-FIND identifier equivalent to the search parameters."""
    tree: Tree = {}
    include: list[str] = []
    for name, value in params:
        if name == "includefield":
            include += [v.strip() for v in value.split(",") if v.strip()]
        elif name not in CONTROL:
            path = name.split(".")
            vr = _attribute(path[-1])[2]
            if vr == "UI":  # QIDO lists UIDs with commas, C-FIND with backslashes
                value = value.replace(",", "\\")
            _put(tree, path, value)
    for keyword in DEFAULT_TOP:
        _put(tree, [keyword], None)
    for keyword in DEFAULT_STEP:
        _put(tree, [SPS, keyword], None)
    for name in include:
        if name != "all":
            _put(tree, name.split("."), None)
    step = tree[SPS]
    if "all" in include and isinstance(step, dict) and \
            not any(isinstance(v, str) and v for v in step.values()):
        tree[SPS] = {}  # an empty item asks for the whole step (its filters would not)
    return Query(_keys(tree), "ISO_IR 192")


def _int(params: dict[str, str], name: str) -> int | None:
    if name not in params:
        return None
    try:
        value = int(params[name])
    except ValueError:
        raise BadQuery(f"{name} must be a whole number") from None
    if value < 0:
        raise BadQuery(f"{name} must not be negative")
    return value


def search(scp, query: Query, offset: int, limit: int | None) -> tuple[list[dict], bool]:
    """The answers as DICOM JSON, and whether the SCP's answer limit cut them short."""
    out: list[dict] = []
    limited = False
    for i, (status, ds) in enumerate(scp.find(query, "")):
        if ds is None:
            limited = status == 0xFE00
            break
        if i < offset:
            continue
        if limit is not None and len(out) >= limit:
            continue  # let find run to its end (it observes the C-FIND metric)
        ds.SpecificCharacterSet = "ISO_IR 192"  # JSON text is Unicode, whatever the item's
        out.append(ds.to_json_dict())
    return out, limited


@router.get("/dicomweb/modality-scheduled-procedure-steps",
            responses={200: {"content": {MEDIA_TYPE: {}}}})
async def modality_scheduled_procedure_steps(request: Request, user: User = viewer
                                             ) -> Response:
    """Search the worklist as a modality's C-FIND would (viewer role)."""
    params = list(request.query_params.multi_items())
    single = dict(params)
    try:
        query = build_query(params)
        offset = _int(single, "offset") or 0
        limit = _int(single, "limit")
    except BadQuery as exc:
        raise HTTPException(400, str(exc)) from exc
    scp = request.app.state.scp
    found, limited = await asyncio.to_thread(search, scp, query, offset, limit)
    headers = {}
    warnings = []
    if single.get("fuzzymatching", "").lower() == "true":
        warnings.append('299 bridge "The fuzzymatching parameter is not supported. '
                        'Only literal matching has been performed."')
    if limited:
        warnings.append('299 bridge "The number of results exceeded the maximum supported '
                        'by the server. Additional results can be requested."')
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    return JSONResponse(found, headers=headers, media_type=MEDIA_TYPE)
