"""Helpers for the mapping tests: fixture messages, small profiles written to tmp_path."""

from __future__ import annotations

import textwrap
from pathlib import Path

from bridge.decoding import decode
from bridge.mapping.engine import MappedMessage, apply_profile
from bridge.mapping.loader import Profile, load_profile
from bridge.message import Message

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hl7"
SHIPPED = ROOT / "mappings"

# A complete profile but for its attributes; tests append theirs, indented by two spaces.
HEAD = """\
profile: test
match: {message_type: ORM^O01}
order: {key: ORC-2, control: ORC-1, status: ORC-5}
attributes:
"""


def message(name: str) -> Message:
    return Message(decode((FIXTURES / name).read_bytes()))


def text_message(text: str) -> Message:
    return Message(decode(text.replace("\n", "\r").encode("latin-1")))


def write(folder: Path, text: str, name: str = "test.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def profile(folder: Path, attributes: str, head: str = HEAD, name: str = "test.yaml") -> Profile:
    body = textwrap.indent(textwrap.dedent(attributes), "  ")
    return load_profile(write(folder, head + body, name))


def mapped(p: Profile, msg: Message) -> MappedMessage:
    return apply_profile(p, msg, trace=True)


def items(p: Profile, msg: Message) -> list[dict]:
    out = []
    for order in mapped(p, msg).orders:
        if order.error is not None:
            raise order.error
        out.extend(order.items)
    return out


def item(p: Profile, msg: Message) -> dict:
    (only,) = items(p, msg)
    return only
