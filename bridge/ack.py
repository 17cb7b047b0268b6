"""HL7 acknowledgements (original mode): MSA with AA, AE or AR, and an ERR segment."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from bridge.message import Message, Separators

# HL7 table 0357, the codes we send.
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNKNOWN_KEY_IDENTIFIER = 204
APPLICATION_INTERNAL_ERROR = 207

_CODE_TEXT = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


@dataclass(frozen=True)
class ErrorLocation:
    """ERR-2 (ERL): segment, its sequence, field, repetition, component, subcomponent."""

    segment: str
    field: int
    sequence: int = 1
    component: int | None = None
    subcomponent: int | None = None

    def render(self, seps: Separators) -> str:
        if not self.field:  # field 0: the segment as a whole (a segment sequence error)
            return f"{self.segment}{seps.component}{self.sequence}"
        parts = [self.segment, str(self.sequence), str(self.field), "1",
                 str(self.component or ""), str(self.subcomponent or "")]
        return seps.component.join(parts).rstrip(seps.component)

    def __str__(self) -> str:
        if not self.field:
            return self.segment
        text = f"{self.segment}-{self.field}"
        if self.component:
            text += f".{self.component}"
            if self.subcomponent:
                text += f".{self.subcomponent}"
        return text


@dataclass(frozen=True)
class AckError:
    code: int
    text: str
    location: ErrorLocation | None = None


# Control characters (C0 and DEL) never go into an ACK as they are: 0x0B and 0x1C are MLLP
# framing (a 0x1C followed by CR ends the frame early), CR ends a segment.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _hex_controls(text: str, seps: Separators) -> str:
    if text.isprintable():
        return text  # no control character (they are all unprintable): the usual case
    esc = seps.escape
    return _CONTROL.sub(lambda m: f"{esc}X{ord(m.group()):02X}{esc}", text)


def _escape(text: str, seps: Separators) -> str:
    """Free text (MSA-3, ERR-8) as one HL7 field value."""
    esc = seps.escape
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((seps.field, "F"), (seps.component, "S"), (seps.repetition, "R"),
                       (seps.subcomponent, "T")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return _hex_controls(out.replace("\r", " ").replace("\n", " "), seps)


def _echo(raw: str, seps: Separators) -> str:
    """A raw field of the message (already HL7-escaped) echoed into the ACK as it was,
    except for control characters; a field separator (possible when the message's own
    separators were unusable) is escaped."""
    return _hex_controls(raw.replace(seps.field, f"{seps.escape}F{seps.escape}"), seps)


def _timestamp() -> str:
    return time.strftime("%Y%m%d%H%M%S")


def build_ack(code: str, ack_id: str, msg: Message | None = None,
              error: AckError | None = None, control_id: str = "") -> str:
    """The ACK text for `msg` (None when the message could not even be read; `control_id`
    is then its MSH-10 when that could be read all the same)."""
    if msg is not None:
        seps = msg.seps
        msh = msg.msh
        # All four separators, whatever MSH-2 left out (and a v2.7 truncation character).
        enc = seps.component + seps.repetition + seps.escape + seps.subcomponent + msh[2][4:5]
        event = msg.header(9, 2)
        fields = ["MSH", enc, msh[5], msh[6], msh[3], msh[4], _timestamp(), "",
                  seps.component.join(p for p in ("ACK", event, "ACK") if p) if event else "ACK",
                  ack_id, msh[11] or "P", msh[12] or "2.5"]
        if msh[18]:
            fields += ["", "", "", "", "", msh[18]]
        # Most echoed fields are plain (printable, no field separator): kept without a call.
        fields = fields[:2] + [f if f.isprintable() and seps.field not in f else _echo(f, seps)
                               for f in fields[2:]]
        control_id = msh[10]
    else:
        seps = Separators()
        fields = ["MSH", "^~\\&", "", "", "", "", _timestamp(), "", "ACK", ack_id, "P", "2.5"]
    # MSH-1 is the separator itself: join from MSH-2 on.
    segments = [fields[0] + seps.field + seps.field.join(fields[1:])]
    msa = ["MSA", code, _echo(control_id, seps)]
    if error is not None:
        msa.append(_escape(error.text, seps))
    segments.append(seps.field.join(msa))
    if error is not None:
        location = error.location.render(seps) if error.location else ""
        code_field = seps.component.join((str(error.code), _CODE_TEXT.get(error.code, ""),
                                          "HL70357"))
        severity = "E"
        err = ["ERR", "", location, code_field, severity, "", "", "", _escape(error.text, seps)]
        segments.append(seps.field.join(err))
    return "\r".join(segments) + "\r"
