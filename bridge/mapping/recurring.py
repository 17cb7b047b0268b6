"""Recurring mapping warnings, counted per profile and rule instead of repeated per message.

A sender whose codes never carry a scheme makes the same warning on every message. The
journal entry of a message keeps only what is specific to it (`MappingWarning.specific`);
every warning is counted here, under the profile, the rule's position and a stable kind,
logged once per (profile, rule, kind) after each mapping reload, and exported as the
Prometheus counter ``hl7bridge_mapping_warnings_total{profile, rule, kind}``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable

from bridge.mapping.engine import MappedMessage

log = logging.getLogger(__name__)

# Called with (profile, rule, kind) for each warning: the metrics counter's inc.
CountHook = Callable[[str, str, str], None]


class WarningTally:
    def __init__(self, count: CountHook | None = None):
        self.count = count
        self.seen: Counter[tuple[str, str, str]] = Counter()  # since the last reload

    def record(self, mapped: MappedMessage) -> None:
        for trace in mapped.traces:
            for attribute, where, kind, text in trace.warning_keys():
                # The attribute with its rule position: the same keyword may have rules in
                # several items of a sequence.
                rule = f"{attribute} ({os.path.basename(where)})" if where else attribute
                key = (mapped.profile, rule, kind)
                if key not in self.seen:
                    log.warning("mapping %s, %s: %s (logged once until the mappings reload; "
                                "counted in hl7bridge_mapping_warnings_total)", mapped.profile,
                                rule, kind if self._phi(text) else text)
                self.seen[key] += 1
                if self.count is not None:
                    self.count(*key)

    @staticmethod
    def _phi(text: str) -> bool:
        # Warning texts may quote values ('15kg' is not a number): only the kind is logged
        # then, unless the text holds no quoted value.
        return "'" in text or '"' in text

    def reset(self) -> None:
        """After a mapping reload: each recurring warning is logged once more."""
        self.seen.clear()
