"""Answers in the character set a modality can show.

Items keep their text as Unicode. A legacy modality configured for, say, ISO_IR 100 gets
its answers in Latin-1; a character Latin-1 cannot hold is transliterated (Ł -> L, Ő -> O,
Ж -> Zh), never dropped, so the name on the console still reads like the patient's name.
"""

from __future__ import annotations

import functools
import unicodedata

from pydicom.charset import python_encoding

TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})

# Letters with no decomposition to a base letter, and common non-Latin letters.
_SPECIAL = {
    "Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h",
    "ı": "i", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "ß": "ss", "Þ": "Th", "þ": "th",
    "Ð": "D", "ð": "d", "ĸ": "k", "Ŋ": "N", "ŋ": "n", "‘": "'", "’": "'", "‚": ",",
    "“": '"', "”": '"', "„": '"', "–": "-", "—": "-", "…": "...", "€": "EUR",
}
_CYRILLIC = dict(zip(
    "АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    ["A", "B", "V", "G", "D", "E", "E", "Zh", "Z", "I", "Y", "K", "L", "M", "N", "O", "P",
     "R", "S", "T", "U", "F", "Kh", "Ts", "Ch", "Sh", "Shch", "", "Y", "", "E", "Yu", "Ya",
     "a", "b", "v", "g", "d", "e", "e", "zh", "z", "i", "y", "k", "l", "m", "n", "o", "p",
     "r", "s", "t", "u", "f", "kh", "ts", "ch", "sh", "shch", "", "y", "", "e", "yu", "ya"],
    strict=True))
_GREEK = dict(zip("ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩαβγδεζηθικλμνξοπρσςτυφχψω",
                  ["A", "V", "G", "D", "E", "Z", "I", "Th", "I", "K", "L", "M", "N", "X", "O",
                   "P", "R", "S", "T", "Y", "F", "Ch", "Ps", "O", "a", "v", "g", "d", "e",
                   "z", "i", "th", "i", "k", "l", "m", "n", "x", "o", "p", "r", "s", "s",
                   "t", "y", "f", "ch", "ps", "o"], strict=True))


class UnknownCharset(ValueError):
    pass


def codec_for(term: str) -> str:
    """The Python codec of a DICOM SpecificCharacterSet term (single-byte or UTF-8)."""
    term = term.strip()
    if term in ("", "ISO_IR 6"):
        return "ascii"
    codec = python_encoding.get(term)
    if codec is None:
        raise UnknownCharset(f"unknown or unsupported character set {term!r}")
    return codec


def transliterate(text: str, codec: str) -> str:
    """`text` with every character the codec cannot encode replaced by a look-alike."""
    if text.isascii():
        return text
    try:
        text.encode(codec)
        return text
    except UnicodeEncodeError:
        pass
    return "".join(_char(c, codec) for c in text)


@functools.lru_cache(maxsize=4096)
def _char(c: str, codec: str) -> str:
    try:
        c.encode(codec)
        return c
    except UnicodeEncodeError:
        pass
    for table in (_SPECIAL, _CYRILLIC, _GREEK):
        if c in table:
            return transliterate(table[c], codec)
    # é -> e + combining accent: keep the base letters the codec can hold.
    base = "".join(b for b in unicodedata.normalize("NFKD", c)
                   if not unicodedata.combining(b))
    if base and base != c:
        return transliterate(base, codec)
    return "?"
