"""Bounded label values: client-controlled strings become at most ``cap`` distinct values plus ``other``."""

from __future__ import annotations

import re

OTHER = "other"
MAX_LABEL_LENGTH = 120
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean(value, max_length: int = MAX_LABEL_LENGTH) -> str:
    """A printable, length-limited label value (exposition escaping itself is prometheus_client's job)."""
    text = "" if value is None else str(value)
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > max_length:
        text = text[: max_length - 1] + "…"
    return text


class LabelCap:
    """Admits the first ``cap`` distinct values; every later new value maps to ``other``.

    The admitted set is part of the checkpoint, so a value keeps its series across restarts.
    """

    def __init__(self, cap: int, admitted=()):
        self.cap = cap
        self.admitted: set[str] = set(admitted)

    def __call__(self, value: str) -> str:
        if value in self.admitted:
            return value
        if len(self.admitted) < self.cap:
            self.admitted.add(value)
            return value
        return OTHER

    def state(self) -> list:
        return sorted(self.admitted)
