"""Parsing ``cwa_user_activity`` rows into ``Event`` objects, tolerant of everything real databases hold.

Handled and counted (``activity_exporter_malformed_rows_total{table="cwa_user_activity", reason=...}``):
- ``bad_timestamp`` (row skipped): NULL or unparseable timestamp. CWA's ``YYYY-MM-DD HH:MM:SS`` and ISO-8601
  (``T``, fractions, ``Z``/offsets) are read; naive times are UTC.
- ``missing_event_type`` (skipped): NULL or empty event type.
- ``legacy_extra_data`` (kept): a plain string in ``extra_data``; as in seed 000 it is the format.
- ``invalid_extra_data`` (kept, extra ignored): JSON that is not an object, or a bare JSON scalar.
- ``oversized_value`` (kept, truncated): a text value longer than ``MAX_TEXT``.
- ``unknown_event_type`` (kept): a type outside the standard list; it still counts under its own (capped) label.
"""

from __future__ import annotations

import calendar
import json
from dataclasses import dataclass
from datetime import datetime, timezone

TABLE = "cwa_user_activity"
MAX_TEXT = 1000
STANDARD_EVENT_TYPES = frozenset({
    "LOGIN", "LOGIN_FAILED", "LOGOUT", "DOWNLOAD", "READ", "SEARCH", "EMAIL", "OPDS_ACCESS", "KOBO_SYNC",
    "API_CALL", "SHELF_ADD", "SHELF_REMOVE",
})
CONTENT_EVENT_TYPES = frozenset({"READ", "DOWNLOAD", "EMAIL"})
API_EVENT_TYPES = frozenset({"OPDS_ACCESS", "KOBO_SYNC", "API_CALL"})
EVENT_COLUMNS = ("id", "timestamp", "user_id", "user_name", "event_type", "item_id", "item_title", "extra_data")


@dataclass(slots=True)
class Event:
    id: int
    ts: float  # seconds since the epoch, UTC
    user_id: int | None
    user_name: str | None
    event_type: str
    item_id: int | None
    item_title: str | None
    extra: dict


_day_cache: dict[str, int] = {}


def parse_timestamp(value) -> float | None:
    """Epoch seconds from CWA's text timestamps (or a datetime); None when it cannot be read."""
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        if len(text) == 19 and text[10] in " T" and text[4] == "-" and text[13] == ":":
            day = text[:10]
            base = _day_cache.get(day)
            try:
                if base is None:
                    y, m, d = int(day[:4]), int(day[5:7]), int(day[8:10])
                    base = calendar.timegm((y, m, d, 0, 0, 0))
                    datetime(y, m, d)  # validates month/day ranges
                    if len(_day_cache) > 50000:
                        _day_cache.clear()
                    _day_cache[day] = base
                h, mi, s = int(text[11:13]), int(text[14:16]), int(text[17:19])
            except ValueError:
                return None
            if h > 23 or mi > 59 or s > 60:
                return None
            return base + h * 3600 + mi * 60 + s
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _as_int(value):
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value, health, reason_counted: list):
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_TEXT:
        reason_counted.append("oversized_value")
        text = text[:MAX_TEXT]
    return text


def parse_extra(raw, notes: list) -> dict:
    """``extra_data`` as a dict: JSON objects as they are, a legacy plain string as ``{"format": string}``."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    text = raw if isinstance(raw, str) else str(raw)
    if len(text) > 64 * MAX_TEXT:
        notes.append("oversized_value")
        return {}
    if text[0] in "{[\"" or text[0].isdigit() or text in ("null", "true", "false"):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
            if text[0] != "{":
                notes.append("legacy_extra_data")
                return {"format": text[:MAX_TEXT]}
            notes.append("invalid_extra_data")
            return {}
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str) and len(item) > MAX_TEXT:
                    notes.append("oversized_value")
                    value[key] = item[:MAX_TEXT]
            return value
        notes.append("invalid_extra_data")
        return {}
    notes.append("legacy_extra_data")
    return {"format": text[:MAX_TEXT]}


def parse_row(row, health) -> Event | None:
    """An ``Event`` from a row in ``EVENT_COLUMNS`` order, or None (counted in ``health``) if unusable."""
    row_id, raw_ts, user_id, user_name, event_type, item_id, item_title, extra_data = row
    ts = parse_timestamp(raw_ts)
    if ts is None:
        health.malformed(TABLE, "bad_timestamp")
        return None
    if not event_type:
        health.malformed(TABLE, "missing_event_type")
        return None
    notes: list = []
    event_type = _text(event_type, health, notes).strip().upper()
    if event_type not in STANDARD_EVENT_TYPES:
        notes.append("unknown_event_type")
    event = Event(
        id=row_id,
        ts=ts,
        user_id=_as_int(user_id),
        user_name=_text(user_name, health, notes),
        event_type=event_type,
        item_id=_as_int(item_id),
        item_title=_text(item_title, health, notes),
        extra=parse_extra(extra_data, notes),
    )
    for reason in set(notes):
        health.malformed(TABLE, reason)
    return event
