"""Business keys: how an order, an item and a sender's message are named in the store.

Keys are text made of parts joined by ``|``, and a part is itself made of HL7 components
(``^``) and subcomponents (``&``). A message can put any of these characters inside a value
with an escape (``\\F\\``, ``\\S\\``, ``\\T\\``), so every value is escaped here before it is
joined: ``\\`` becomes ``\\\\`` and each separator gets a backslash in front. Two different
lists of values then never give the same key, while a value without those characters keeps
the plain form (``P1^RIS|RP1|SPS1``): `.wl` file names and Orthanc IDs of such items do not
change.
"""

from __future__ import annotations

import re

from bridge.mapping.rules import Rule, Scope
from bridge.message import Message, Separators, unescape


def escape(value: str, chars: str = "\\|") -> str:
    """One value as a key part: the backslash and `chars` get a backslash in front."""
    if "\\" not in value and not any(char in value for char in chars):
        return value  # most values: nothing to escape
    value = value.replace("\\", "\\\\")
    for char in chars.replace("\\", ""):
        value = value.replace(char, "\\" + char)
    return value


def join(*parts: str) -> str:
    """Parts already escaped (or built by `field_key`), joined by ``|``."""
    return "|".join(parts)


def field_key(raw: str, seps: Separators) -> str:
    """A raw (escaped) HL7 field as key text: its first repetition, every component and
    subcomponent unescaped then escaped for the key. Trailing empty components say nothing
    in HL7 and are dropped; so is surrounding white space."""
    special = _special(seps)
    if special.search(raw) is None:
        # One plain value (most identifiers): nothing to split, unescape or escape.
        return raw.strip()
    components = []
    for comp in raw.split(seps.repetition, 1)[0].split(seps.component):
        if special.search(comp) is None:
            # A plain component (both parts of `B1^RIS`): the common case, as a whole.
            components.append(comp.strip())
            continue
        subs = [escape(unescape(sub, seps).strip(), "\\|^&")
                for sub in comp.split(seps.subcomponent)]
        components.append("&".join(_trimmed(subs)))
    return "^".join(_trimmed(components))


_SPECIAL: dict[str, re.Pattern[str]] = {}


def _special(seps: Separators) -> re.Pattern[str]:
    """Finds what makes a raw value more than one plain part: the message's separators and
    escape character, and the key's own (``\\ | ^ &``). One pattern per set of separators
    (a few per site), built once: a search is cheaper than a test per character."""
    special = _SPECIAL.get(seps.characters)
    if special is None:
        chars = "".join(dict.fromkeys(seps.characters + "\\|^&"))
        special = _SPECIAL[seps.characters] = re.compile(f"[{re.escape(chars)}]")
    return special


def _trimmed(parts: list[str]) -> list[str]:
    while parts and not parts[-1]:
        parts.pop()
    return parts


def sender_key(msg: Message) -> str:
    """MSH-3 and MSH-4, whole (all components): the sender part of the duplicate check."""
    return join(field_key(msg.msh[3], msg.seps), field_key(msg.msh[4], msg.seps))


def control_key(msg: Message) -> str:
    """MSH-10, whole: a control ID `T3^B` is not `T3^A`."""
    return field_key(msg.msh[10], msg.seps)


def item_key(order_key: str, requested_procedure_id: str, step_id: str) -> str:
    """An item is its order plus its requested procedure and scheduled step IDs.
    `order_key` is key text already (`field_key` or `escape`)."""
    return join(order_key, escape(requested_procedure_id), escape(step_id))


# HL7 defines OBR-2 and OBR-3 as the ORC-2 and ORC-3 of the order (placer and filler order
# numbers): the same identifier, wherever a message carries it.
_SAME_FIELD = {("OBR", 2): "ORC", ("OBR", 3): "ORC"}


def order_identifiers(rule: Rule, scope: Scope) -> list[tuple[str, str]]:
    """Every identifier the mapping's `order.key` rule can read in an order group, as
    (kind, key text) in the rule's order: `from: [ORC-2, OBR-2, ORC-3, OBR-3]` gives the
    placer number (kind ``ORC-2``) and the filler number (``ORC-3``) when both are there.
    The first one is the order's key. A rule that computes its value (value, template,
    replace, map, a transform other than text) names one identifier only: none here."""
    if rule.value is not None or rule.template is not None or rule.replace or \
            rule.value_map is not None or rule.transform not in (None, "text"):
        return []
    found: list[tuple[str, str]] = []
    for path in rule.sources:
        if path.segment_sel is not None or path.repetition_sel is not None:
            return []
        raws = scope.present(path)
        value = field_key(raws[0], scope.seps) if raws else ""
        if not value:
            continue
        segment = _SAME_FIELD.get((path.segment, path.field), path.segment)
        kind = ".".join(str(n) for n in (f"{segment}-{path.field}", path.component,
                                         path.subcomponent) if n is not None)
        if (kind, value) not in found:
            found.append((kind, value))
    return found
