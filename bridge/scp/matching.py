"""C-FIND matching, DICOM PS3.4 C.2.2.2, on worklist items as the store keeps them.

An item is a dict: DICOM keyword -> text (multiple values joined with a backslash) or, for
a sequence, a list of such dicts. `answer` decides whether an item matches the query's keys
and, when it does, returns exactly the requested keys: tag -> (VR, value).

Kinds of matching, by the key's value and VR:
- empty: universal (matches anything, the key is only returned); `*` alone is the same,
  whatever the VR;
- `*` and `?`: wildcards, except on DA, TM, DT, UI and numbers, where they are literal;
  matched by `wildcard_match`, in time linear in the value's length times the pattern's,
  whatever the pattern (a modality's query must never be able to hold the process);
- `\\`-separated values: any of them (a list of UIDs, C.2.2.2.2);
- `a-b`, `-b`, `a-`: a range on DA, TM and DT; when a query item has both
  ScheduledProcedureStepStartDate and ScheduledProcedureStepStartTime, the two make one
  date-time range (C.2.2.2.5.1: 20240101-20240102 with 0800-1800 runs from the 1st at 08:00
  to the 2nd at 18:00);
- a sequence: some item of the stored sequence matches every key of the query's item; only
  the matching items are returned;
- otherwise single value matching, exact; case-insensitive for PN when asked.
A stored attribute with several values matches when any of its values does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, tag_for_keyword

from bridge.scp.query import SPS_START_DATE, SPS_START_TIME, Key

# Answer: tag -> (VR, value); a sequence's value is a list of such dicts.
Value = str | list["Answer"]
Answer = dict[int, tuple[str, Value]]

NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "DS", "IS", "SV", "UV"})
NO_WILDCARD_VRS = frozenset({"DA", "TM", "DT", "UI", "AT"}) | NUMERIC_VRS
RANGE_VRS = frozenset({"DA", "TM", "DT"})
# Text VRs where a backslash is a character, not a value separator.
SINGLE_VALUED_TEXT = frozenset({"LT", "ST", "UT"})


@dataclass(frozen=True)
class MatchOptions:
    pn_case_insensitive: bool = False


DEFAULT_OPTIONS = MatchOptions()


def answer(keys: tuple[Key, ...], item: dict, options: MatchOptions = DEFAULT_OPTIONS
           ) -> Answer | None:
    """The requested keys of `item` when it matches every key, else None."""
    if not _match_keys(keys, item, options):
        return None
    return _project(keys, item, options)


def matches(keys: tuple[Key, ...], item: dict, options: MatchOptions = DEFAULT_OPTIONS
            ) -> bool:
    return _match_keys(keys, item, options)


def project(keys: tuple[Key, ...], item: dict, options: MatchOptions = DEFAULT_OPTIONS
            ) -> Answer:
    """The requested keys of an item that `matches`: what `answer` returns for it."""
    return _project(keys, item, options)


def projection_complete(keys: tuple[Key, ...], item: dict,
                        options: MatchOptions = DEFAULT_OPTIONS) -> bool:
    """Does the answer to an item that `matches` keep every stored item of each returned
    sequence? Then it depends only on the item and the requested keys (not on the query's
    values), and may be reused for another query asking for the same keys."""
    for key in keys:
        if not key.returned or not key.is_sequence or not key.keyword:
            continue
        stored = item.get(key.keyword)
        stored_items = stored if isinstance(stored, list) else []
        # One stored item and one query item: the item matched, so it is kept (the usual
        # worklist item, one step). Otherwise each stored item must match every filter.
        if len(stored_items) > 1 or len(key.items) > 1:
            filters = [q for q in key.items if _has_filter(q)]
            if not all(_match_keys(q, s, options) for q in filters for s in stored_items):
                return False
        requested = [q for q in key.items if any(k.returned for k in q)]
        if requested and not all(projection_complete(requested[0], s, options)
                                 for s in stored_items):
            return False
    return True


# --- matching ---------------------------------------------------------------------------


def _match_keys(keys: tuple[Key, ...], data: dict, options: MatchOptions) -> bool:
    combined = _combined_date_time(keys)
    for key in keys:
        if combined is not None and key.tag in (SPS_START_DATE, SPS_START_TIME):
            continue
        if key.is_sequence:
            if not _match_sequence(key, data.get(key.keyword), options):
                return False
        elif key.value and key.keyword and not match_value(
                key.value, _stored_text(data.get(key.keyword)), key.vr, options):
            return False
    if combined is not None:
        date = _stored_text(data.get("ScheduledProcedureStepStartDate"))
        time = _stored_text(data.get("ScheduledProcedureStepStartTime"))
        return match_date_time(combined[0], combined[1], date, time)
    return True


def _combined_date_time(keys: tuple[Key, ...]) -> tuple[str, str] | None:
    date = time = ""
    for key in keys:
        if key.tag == SPS_START_DATE:
            date = key.value
        elif key.tag == SPS_START_TIME:
            time = key.value
    return (date, time) if date and time else None


def _match_sequence(key: Key, stored: object, options: MatchOptions) -> bool:
    filters = [item for item in key.items if _has_filter(item)]
    if not filters:
        return True  # only return keys: universal
    stored_items = stored if isinstance(stored, list) else []
    # Each query item must be matched by some stored item (there is usually one of each).
    return all(any(_match_keys(q, s, options) for s in stored_items) for q in filters)


def _has_filter(keys: tuple[Key, ...]) -> bool:
    return any(_has_filter(i) for k in keys if k.is_sequence for i in k.items) or \
        any(k.value and k.keyword for k in keys if not k.is_sequence)


def _stored_text(value: object) -> str:
    if value is None or isinstance(value, list):
        return ""
    return str(value)


def match_value(query: str, stored: str, vr: str, options: MatchOptions = DEFAULT_OPTIONS
                ) -> bool:
    """Does the stored value match a non-empty query value of this VR?"""
    if query == "*":
        # C.2.2.2.4: a lone "*" is universal matching. Where wildcards are not allowed
        # (DA, UI...) it could only be a modality's mistake: read it the same way.
        return True
    stored_values = _values(stored, vr)
    if vr in RANGE_VRS:
        return any(_match_range(query, s, vr) for s in stored_values)
    query_values = [query] if vr in SINGLE_VALUED_TEXT else query.split("\\")
    for q in query_values:
        q = q.strip()
        for s in stored_values:
            if _match_single(q, s, vr, options):
                return True
    return False


def _values(stored: str, vr: str) -> list[str]:
    if vr in SINGLE_VALUED_TEXT or "\\" not in stored:
        return [stored.strip()]
    return [v.strip() for v in stored.split("\\")]


def _match_single(query: str, stored: str, vr: str, options: MatchOptions) -> bool:
    if vr in NUMERIC_VRS:
        try:
            return float(query) == float(stored)
        except ValueError:
            return query == stored
    fold = vr == "PN" and options.pn_case_insensitive
    if vr not in NO_WILDCARD_VRS and ("*" in query or "?" in query):
        return wildcard_match(query, stored, fold)
    if vr == "PN":
        # Trailing empty components are insignificant: DOE^JOHN^ is DOE^JOHN.
        query, stored = query.rstrip("^ "), stored.rstrip("^ ")
    if fold:
        return query.casefold() == stored.casefold()
    return query == stored


def wildcard_match(pattern: str, text: str, fold: bool = False) -> bool:
    """Does `text` match `pattern` as a whole, `*` standing for any run of characters
    and `?` for exactly one (C.2.2.2.4)?

    Two pointers and one backtrack point: on a mismatch after a `*`, only the last `*`
    is retried one character further on. That is enough, because a later `*` can absorb
    whatever an earlier one would have, so the work is at most len(pattern) * len(text)
    steps. A regular expression from the same pattern backtracks over every `*` at once:
    `*?*?*?...Z` against one ordinary value ran for minutes.
    """
    if fold:
        pattern, text = pattern.casefold(), text.casefold()
    while "**" in pattern:  # a run of stars means what one star means
        pattern = pattern.replace("**", "*")
    if len(pattern) - pattern.count("*") > len(text):
        return False  # more characters required than the value has (huge patterns end here)
    p = t = 0
    star = -1  # position of the last `*` seen in the pattern, -1 before any
    resume = 0  # where in `text` that `*` stops absorbing characters
    while t < len(text):
        c = pattern[p] if p < len(pattern) else ""
        if c == "*":
            star, resume = p, t
            p += 1
        elif c and c in ("?", text[t]):  # a `*` in the value is only a character
            p += 1
            t += 1
        elif star >= 0:
            # Let the last `*` take one more character and try the rest again.
            resume += 1
            p, t = star + 1, resume
        else:
            return False
    return pattern[p:].strip("*") == ""


def _match_range(query: str, stored: str, vr: str) -> bool:
    if not stored:
        return False
    norm = _normalize_time if vr == "TM" else _normalize_date
    # A DT value may carry a "-hhmm" UTC offset: only one "-" makes a DT range.
    is_range = "-" in query and (vr != "DT" or query.count("-") == 1)
    if not is_range:
        return norm(query) == norm(stored)
    low, _, high = query.partition("-")
    value = norm(stored)
    return (not low or norm(low) <= value) and (not high or value <= norm(high, upper=True))


def match_date_time(date_query: str, time_query: str, date: str, time: str) -> bool:
    """The combined SPS start date and time range (C.2.2.2.5.1)."""
    if not date:
        return False
    d_low, d_sep, d_high = date_query.partition("-")
    t_low, t_sep, t_high = time_query.partition("-")
    if not d_sep:
        d_high = d_low
    if not t_sep:
        t_high = t_low
    value = _normalize_date(date) + _normalize_time(time or "000000")
    if d_low and value < _normalize_date(d_low) + _normalize_time(t_low or "000000"):
        return False
    upper = _normalize_time(t_high, upper=True) if t_high else "235959.999999"
    return not (d_high and value > _normalize_date(d_high) + upper)


def _normalize_date(value: str, upper: bool = False) -> str:
    # Old ACR-NEMA style dates (2024.01.31) still appear in some systems.
    return value.strip().replace(".", "")


def _normalize_time(value: str, upper: bool = False) -> str:
    """HHMMSS.FFFFFF, so that times compare as strings. A partial upper bound covers the
    whole of its last unit: "-12" runs to 12:59:59.999999, "-1200" to 12:00:59.999999."""
    value = value.strip().replace(":", "")
    whole, _, fraction = value.partition(".")
    whole = whole[:6] + ("235959" if upper else "000000")[len(whole[:6]):]
    return f"{whole}.{fraction[:6].ljust(6, '9' if upper and not fraction else '0')}"


# --- projection -------------------------------------------------------------------------


def _project(keys: tuple[Key, ...], data: dict, options: MatchOptions) -> Answer:
    out: Answer = {}
    for key in keys:
        if not key.returned:
            continue
        if not key.keyword:
            out[key.tag] = (key.vr, "")  # private or unknown: returned empty
        elif key.is_sequence:
            out[key.tag] = ("SQ", _project_sequence(key, data.get(key.keyword), options))
        else:
            out[key.tag] = (key.vr, _stored_text(data.get(key.keyword)))
    return out


def _project_sequence(key: Key, stored: object, options: MatchOptions) -> list[Answer]:
    stored_items = stored if isinstance(stored, list) else []
    requested = [item for item in key.items if any(k.returned for k in item)]
    filters = [item for item in key.items if _has_filter(item)]
    # Only the stored items that match the query's item come back.
    kept = [s for s in stored_items if all(_match_keys(q, s, options) for q in filters)]
    if not requested:
        return [whole_item(s) for s in kept]  # an empty item asks for everything
    return [_project(requested[0], s, options) for s in kept]


def whole_item(data: dict) -> Answer:
    """Every attribute of a stored item, as an answer."""
    out: Answer = {}
    for keyword, value in data.items():
        tag, vr = _tag_vr(keyword)
        if tag is None:
            continue
        if isinstance(value, list):
            out[tag] = ("SQ", [whole_item(v) for v in value])
        else:
            out[tag] = (vr, str(value))
    return out


@functools.lru_cache(maxsize=2048)
def _tag_vr(keyword: str) -> tuple[int | None, str]:
    tag = tag_for_keyword(keyword)
    return (tag, dictionary_VR(tag)) if tag is not None else (None, "")
