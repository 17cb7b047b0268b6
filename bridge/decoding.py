"""Bytes to text: each message is decoded in the character set its own MSH-18 names.

The listener hands over raw bytes; nothing before this module guesses an encoding. A
per-sender override (mapping profiles) replaces MSH-18 for feeds that mislabel it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bridge import logthrottle

log = logging.getLogger(__name__)
# A sender that mislabels its UTF-8 does so in every message: the warning passes once per
# interval and declared charset, then is counted ("[N more like this ...]", flushed by the
# listener), not written once per message.
logthrottle.install(log)

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Charset:
    hl7: str  # the MSH-18 term, normalised
    codec: str  # Python codec
    dicom: str  # DICOM SpecificCharacterSet term ("" means the default repertoire)


# MSH-18 -> codec and DICOM term (REFERENCE section 4). Keys are upper case, without
# spaces or underscores, so that "UNICODE UTF-8", "UTF-8" and "utf8" all match.
_CHARSETS = {
    "ASCII": Charset("ASCII", "ascii", ""),
    "8859/1": Charset("8859/1", "latin-1", "ISO_IR 100"),
    "8859/2": Charset("8859/2", "iso8859-2", "ISO_IR 101"),
    "8859/5": Charset("8859/5", "iso8859-5", "ISO_IR 144"),
    "8859/7": Charset("8859/7", "iso8859-7", "ISO_IR 126"),
    "8859/8": Charset("8859/8", "iso8859-8", "ISO_IR 138"),
    "8859/9": Charset("8859/9", "iso8859-9", "ISO_IR 148"),
    "UNICODEUTF-8": Charset("UNICODE UTF-8", "utf-8", "ISO_IR 192"),
    "UNICODE": Charset("UNICODE UTF-8", "utf-8", "ISO_IR 192"),
    "UTF-8": Charset("UNICODE UTF-8", "utf-8", "ISO_IR 192"),
    "UTF8": Charset("UNICODE UTF-8", "utf-8", "ISO_IR 192"),
    "ISOIR87": Charset("ISO IR87", "iso2022_jp", "\\ISO 2022 IR 87"),
    "GB18030-2000": Charset("GB 18030-2000", "gb18030", "GB18030"),
    "KSX1001": Charset("KS X 1001", "euc-kr", "\\ISO 2022 IR 149"),
    # Not an HL7 term: a per-sender override (mapping `charset:`) for feeds that send
    # Windows-1252 bytes labelled 8859/1. Written as UTF-8: curly quotes and the euro sign
    # have no place in ISO_IR 100.
    "WINDOWS-1252": Charset("WINDOWS-1252", "cp1252", "ISO_IR 192"),
    "CP1252": Charset("WINDOWS-1252", "cp1252", "ISO_IR 192"),
}
UTF8 = _CHARSETS["UTF-8"]


class UnknownCharset(ValueError):
    """MSH-18 names a character set this bridge cannot decode."""


def lookup_charset(term: str) -> Charset:
    key = term.strip().upper().replace(" ", "").replace("_", "")
    try:
        return _CHARSETS[key]
    except KeyError:
        raise UnknownCharset(term) from None


@dataclass(frozen=True)
class DecodedMessage:
    text: str  # segments separated by "\r", no BOM, no trailing separator
    charset: Charset
    declared: str  # MSH-18 as it was in the message ("" when absent)
    sniffed_utf8: bool  # decoded as UTF-8 although MSH-18 said otherwise


class DecodeError(ValueError):
    """The bytes are not an HL7 message (no MSH header)."""


def _msh18(raw: bytes) -> str:
    """MSH-18 read from the bytes of the header, before any decoding."""
    end = len(raw)
    for sep in (b"\r", b"\n"):
        pos = raw.find(sep)
        if pos != -1:
            end = min(end, pos)
    header = raw[:end]
    fields = header.split(header[3:4])
    # fields[0] is "MSH", fields[1] MSH-2; so MSH-n is fields[n - 1].
    if len(fields) < 18:
        return ""
    # The repetition separator is MSH-2's second character (HL7's "~" when MSH-2 is short).
    first_repetition = fields[17].split(fields[1][1:2] or b"~")[0]
    return first_repetition.decode("ascii", "replace").strip()


_DEFAULT_ENCODING = b"^~\\&"
# MSH-1 + MSH-2 values already found usable: a sender uses one set for every message, and
# the checks cost more than the rest of decoding. Bounded, as MSH-2 is the sender's to vary.
_USABLE_SEPARATORS: set[bytes] = set()
_USABLE_MAX = 64


def _check_separators(raw: bytes) -> None:
    """MSH-1 and MSH-2 must be usable: 2 to 5 distinct punctuation characters in all
    (v2.7 adds a fifth, the truncation character). Letters or repeats there would split
    the whole message into nonsense."""
    field = raw[3:4]
    ends = [i for i in (raw.find(field, 4), raw.find(b"\r", 4), raw.find(b"\n", 4)) if i != -1]
    encoding = raw[4:min(ends, default=len(raw))]
    chars = field + encoding
    if chars in _USABLE_SEPARATORS:
        return
    if not 1 <= len(encoding) <= 5 or len(set(chars)) != len(chars) or not all(
            0x21 <= c <= 0x7E and not chr(c).isalnum() for c in chars):
        shown = chars[:6].decode("latin-1")
        raise DecodeError(f"MSH-1/MSH-2 (separators {shown!r}) are not distinct "
                          "punctuation characters")
    # A short MSH-2 leaves the other separators at HL7's defaults (message.py): those
    # must not be a character the message declared for something else.
    effective = chars + _DEFAULT_ENCODING[len(encoding):]
    if len(set(effective)) != len(effective):
        shown = chars.decode("latin-1")
        raise DecodeError(f"MSH-1/MSH-2 (separators {shown!r}) leave out separators whose "
                          f"defaults ({_DEFAULT_ENCODING.decode()!r}) they use otherwise")
    if len(_USABLE_SEPARATORS) < _USABLE_MAX:
        _USABLE_SEPARATORS.add(chars)


def peek_control_id(raw: bytes) -> str:
    """MSH-10 as it stands in the first line of `raw` ("" when it cannot be read), without
    decoding or checking anything else: the ACK of a message refused before it could be
    read (oversized, unusable separators, unknown MSH-18) still names the message.

    `raw` may be only the first bytes of a frame: an MSH-10 that reaches the end of those
    bytes might be cut short, and is not trusted."""
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    raw = raw.lstrip(b"\r\n\t ")
    if not raw.startswith(b"MSH") or len(raw) < 4 or raw[3:4] in (b"\r", b"\n"):
        return ""
    ends = [i for i in (raw.find(b"\r"), raw.find(b"\n")) if i != -1]
    line = raw[:min(ends)] if ends else raw
    fields = line.split(raw[3:4])
    # fields[0] is "MSH", fields[1] MSH-2; so MSH-10 is fields[9].
    if len(fields) < 10 or (len(fields) == 10 and not ends):
        return ""
    return fields[9].decode("latin-1")


def _is_utf8_with_non_ascii(raw: bytes) -> bool:
    if raw.isascii():
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode(
    raw: bytes,
    *,
    default_charset: str = "8859/1",
    override: str | None = None,
    detect_utf8: bool = True,
) -> DecodedMessage:
    """Decode one MLLP payload into HL7 text with "\\r" segment separators.

    `override` replaces MSH-18 (a per-sender setting); `default_charset` applies when MSH-18
    is empty. Raises DecodeError when there is no MSH header and UnknownCharset when MSH-18
    names a character set we do not know.
    """
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    # Some senders put blank lines or stray whitespace before MSH.
    raw = raw.lstrip(b"\r\n\t ")
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise DecodeError("the message does not start with an MSH segment")
    if raw[3:4] in (b"\r", b"\n"):
        # "MSH" alone on its line: there is no field separator to split anything with.
        raise DecodeError("MSH-1 (the field separator) is missing")
    _check_separators(raw)
    declared = _msh18(raw)
    charset = lookup_charset(override or declared or default_charset)
    sniffed = False
    if charset.codec != "utf-8" and detect_utf8 and _is_utf8_with_non_ascii(raw):
        log.warning("MSH-18 says %r but the bytes are UTF-8: decoding as UTF-8",
                    declared or default_charset,
                    extra={logthrottle.THROTTLE_KEY: declared or default_charset})
        charset, sniffed = UTF8, True
    text = raw.decode(charset.codec, errors="replace")
    # CR is the HL7 separator; LF and CRLF are common in files and some feeds.
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    return DecodedMessage(text=text, charset=charset, declared=declared, sniffed_utf8=sniffed)
