"""Answers encoded directly must be byte for byte what pydicom encodes from elements."""

from __future__ import annotations

import pytest
from pydicom.dataelem import RawDataElement
from pynetdicom.dsutils import encode

from bridge.scp.server import response

ANSWER = {
    0x00080050: ("SH", "A1"),                                 # even length
    0x00100010: ("PN", "Müller^Jürgen"),                      # odd once encoded
    0x00100020: ("LO", "P1"),
    0x00100030: ("DA", ""),                                   # empty
    0x00101020: ("DS", "1.75"),
    0x00101030: ("DS", "70.5"),
    0x001021C0: ("US", "4"),                                  # binary number
    0x00102000: ("LO", "ALLERGY\\ASTHMA"),                    # two values
    0x0020000D: ("UI", "1.2.826.0.1.3680043.10.1445.9.1"),    # odd: NUL padded
    0x00291010: ("UN", ""),                                   # private key, returned empty
    0x00321064: ("SQ", []),                                   # empty sequence
    0x00400100: ("SQ", [{
        0x00080060: ("CS", "CT"),
        0x00400001: ("AE", "AA32\\AA33"),
        0x00400002: ("DA", "20240102"),
        0x00400003: ("TM", "0900"),
        0x00400400: ("LT", "back\\slash is text"),
        0x00400008: ("SQ", [{0x00080100: ("SH", "X1"), 0x00080104: ("LO", "Schädel")}]),
    }]),
}


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize(("item_charset", "target"), [
    ("ISO_IR 100", ""),            # the item's own Latin-1
    ("ISO_IR 192", ""),            # UTF-8
    ("ISO_IR 192", "ISO_IR 100"),  # a legacy modality's Latin-1
    ("", ""),                      # nothing declared: non-ASCII text goes out as UTF-8
    ("", "ISO_IR 6"),              # plain ASCII asked for: transliterated
])
def test_same_bytes_as_pydicom(implicit: bool, item_charset: str, target: str) -> None:
    direct = response(ANSWER, item_charset, target, implicit)
    through_pydicom = response(ANSWER, item_charset, target, None)
    assert encode(direct, implicit, True) == encode(through_pydicom, implicit, True)
    # And pydicom wrote the raw values as they were, without decoding them first.
    assert isinstance(direct.get_item(0x00100010), RawDataElement)


def test_a_number_that_is_not_one_is_answered_empty() -> None:
    bad = {0x001021C0: ("US", "x")}
    for implicit in (True, False):
        assert encode(response(bad, "", "", implicit), implicit, True) == \
            encode(response(bad, "", "", None), implicit, True)


def test_iso_2022_goes_through_pydicom() -> None:
    """Code extensions need pydicom's escape sequences: no direct encoding for them."""
    ds = response({0x00100010: ("PN", "Yamada^Tarou")}, "\\ISO 2022 IR 87", "", True)
    assert not isinstance(ds.get_item(0x00100010), RawDataElement)
