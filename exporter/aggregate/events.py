"""Parsing ``cwa_user_activity`` rows into ``Event`` objects, tolerant of everything real databases hold.

Handled and counted (``activity_exporter_malformed_rows_total{table="cwa_user_activity", reason=...}``):
- ``bad_timestamp`` (row skipped): NULL or unparseable timestamp. CWA's ``YYYY-MM-DD HH:MM:SS`` and ISO-8601
  (``T``, fractions, ``Z``/offsets) are read; naive times are UTC.
- ``missing_event_type`` (skipped): NULL or empty event type.
- ``legacy_extra_data`` (kept): a plain string in ``extra_data``; as in seed 000 it is the format.
- ``invalid_extra_data`` (kept, extra ignored): JSON that is not an object, or a bare JSON scalar; in an
  object, values that are themselves objects or arrays are dropped (every field we read is a plain value).
- ``oversized_value`` (kept, truncated): a text value longer than ``MAX_TEXT``.
- ``unknown_event_type`` (kept): a type outside the standard list; it still counts under its own (capped) label.
"""

from __future__ import annotations

import calendar
import json
from bisect import bisect_left
from collections import Counter
from itertools import groupby, repeat
from operator import floordiv, itemgetter
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
        text = _text(value).strip()
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


def parse_extra(raw, notes: list) -> dict:
    """``extra_data`` as a dict: JSON objects as they are, a legacy plain string as ``{"format": string}``."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    text = _text(raw)
    if not text:
        return {}
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
            if len(text) <= MAX_TEXT and _NESTED.isdisjoint(map(type, value.values())):
                return value  # the usual case: no value nested, none longer than the whole text
            for key, item in list(value.items()):
                if isinstance(item, str):
                    if len(item) > MAX_TEXT:
                        notes.append("oversized_value")
                        value[key] = item[:MAX_TEXT]
                elif isinstance(item, (dict, list)):  # no field of ours is nested: labels need plain values
                    notes.append("invalid_extra_data")
                    del value[key]
            return value
        notes.append("invalid_extra_data")
        return {}
    notes.append("legacy_extra_data")
    return {"format": text[:MAX_TEXT]}


def parse_row(row, health) -> Event | None:
    """An ``Event`` from one row in ``EVENT_COLUMNS`` order, or None (counted in ``health``) if unusable.
    The same reading as ``BatchParser``, which does the work, so one row and a chunk are never read apart."""
    return next(iter(BatchParser(health).parse([row]).events()), None)


class Batch:
    """A chunk of parsed rows as columns: aggregators count whole columns at C speed (``Counter(zip(...))``)
    instead of handling one ``Event`` at a time. ``extras`` dicts may be shared between rows: read-only."""

    __slots__ = ("ids", "ts", "user_ids", "user_names", "event_types", "item_ids", "item_titles", "extras", "_keys",
                 "_runs", "counts", "sessions")

    def __init__(self, ids, ts, user_ids, user_names, event_types, item_ids, item_titles, extras, counts=None):
        self.ids = ids
        self.ts = ts
        self.user_ids = user_ids
        self.user_names = user_names
        self.event_types = event_types
        self.item_ids = item_ids
        self.item_titles = item_titles
        self.extras = extras
        self._keys = None
        self._runs: dict = {}  # unit size -> runs, see ``runs``
        self.counts: dict = counts if counts is not None else {}  # name -> Counter, see ``count_ahead``
        self.sessions = None  # the helper's ``Sessions.walk`` over these rows, when it walked them

    def __len__(self) -> int:
        return len(self.ids)

    def columns(self) -> tuple:
        """The columns in ``Batch(...)`` argument order (to send a batch to another process)."""
        return (self.ids, self.ts, self.user_ids, self.user_names, self.event_types, self.item_ids, self.item_titles,
                self.extras)

    def user_keys(self) -> list:
        """Who did each row, for distinct counts and sessions: the user id, else ``"n:" + name``, else None
        (the prefix keeps user 5 and a user named "5" apart). Computed once, shared by the aggregators."""
        if self._keys is None:
            if None not in self.user_ids:  # the usual case: every row has a user id
                self._keys = self.user_ids
            else:
                self._keys = [uid if uid is not None else (("n:" + name) if name else None)
                              for uid, name in zip(self.user_ids, self.user_names)]
        return self._keys

    def runs(self, size: int = 900) -> list:
        """``(unit, first row, end row)`` for each run of consecutive rows in the same UTC unit ``ts // size``
        (a quarter hour unless said), in row order. Every zone's offset, DST change and (whole quarter) report
        start falls on a quarter, so local hours, days and half-hour slots are looked up once per run, and a
        day's rows are a few slices. Rows come in time order, so a chunk has few runs: they are found by
        bisection, not by a pass over the rows (which only a chunk with late rows needs)."""
        runs = self._runs.get(size)
        if runs is None:
            runs = self._runs[size] = _runs(self.ts, size)
        return runs

    def quarter_counts(self) -> Counter:
        """Rows per quarter hour (shared: hour-of-week and report slots)."""
        counts = self.counts.get("quarters")
        if counts is None:
            counts = self.counts["quarters"] = Counter()
            for quarter, start, end in self.runs():
                counts[quarter] += end - start
        return counts

    def type_user_counts(self) -> Counter:
        """Rows per (event type, user id, user name), in order of first appearance."""
        return self._count("type_users")

    def device_counts(self) -> Counter:
        """Rows per raw ``extra_data.device_type`` value (None when missing)."""
        return self._count("devices")

    def _count(self, name: str) -> Counter:
        counts = self.counts.get(name)
        if counts is None:
            counts = self.counts[name] = _COUNTS[name](self)
        return counts

    def count_ahead(self) -> dict:
        """Per-chunk counts computed now: the helper process counts the (type, user) pairs before sending a
        batch, so the folding process receives them ready (small, and a pass over the rows each). Quarter
        and device counts stay with the folding process: that balances the two processes' work (measured)."""
        self._count("type_users")
        return self.counts

    def events(self):
        """The rows as ``Event`` objects, for aggregators that fold one event at a time."""
        return map(Event, self.ids, self.ts, self.user_ids, self.user_names, self.event_types, self.item_ids,
                   self.item_titles, self.extras)


def _runs(ts: list, size: int) -> list:
    runs = []
    if sorted(ts) == ts:  # (timsort checks a sorted list in one pass)
        start, n = 0, len(ts)
        while start < n:
            unit = ts[start] // size
            end = bisect_left(ts, (unit + 1) * size, start)
            runs.append((unit, start, end))
            start = end
    else:
        start = 0
        for unit, rows in groupby(map(floordiv, ts, repeat(size))):
            end = start + len(list(rows))
            runs.append((unit, start, end))
            start = end
    return runs


def merge_runs(runs: list, key_of: dict) -> list:
    """``(key, first row, end row)``: consecutive ``runs`` whose units have the same ``key_of[unit]`` (a day,
    say) joined into one range of rows."""
    ranges: list = []
    for unit, start, end in runs:
        key = key_of[unit]
        if ranges and ranges[-1][0] == key:
            ranges[-1] = (key, ranges[-1][1], end)
        else:
            ranges.append((key, start, end))
    return ranges


_COUNTS = {
    "type_users": lambda batch: Counter(zip(batch.event_types, batch.user_ids, batch.user_names)),
    "devices": lambda batch: Counter([extra.get("device_type") for extra in batch.extras]),
}


class BatchParser:
    """Parses chunks of rows into ``Batch`` columns, remembering recent ``extra_data`` strings and event types,
    which repeat a lot, so each distinct value is parsed (and its problems counted) once per occurrence."""

    # Distinct values remembered, each cache emptied when full (about 1 KB an entry). extra_data repeats
    # (the shim stores whole milliseconds), but a writer that stores finer durations makes each API row's
    # text unique, and a large cache of those only costs memory (measured: 200,000 entries held ~200 MB).
    EXTRAS_LIMIT = 20_000
    TEXTS_LIMIT = 50_000

    def __init__(self, health):
        self.health = health
        self._extras: dict = {}  # raw extra_data -> (dict, notes)
        self._types: dict = {}  # raw event_type -> (normalised or None, notes)
        self._plain_extras: dict = {}  # raw extra_data without problems -> its dict
        self._plain_types: dict = {}  # raw event_type without problems -> the normalised type
        self._names: dict = {}  # raw user name -> the one str object used for it
        self._titles: dict = {}  # raw item title -> the one str object used for it
        self._long: set = set()  # texts from those two longer than MAX_TEXT

    def _extra(self, raw):
        parsed = self._extras.get(raw)
        if parsed is None:
            notes: list = []
            parsed = (parse_extra(raw, notes), tuple(sorted(set(notes))))
            if len(self._extras) >= self.EXTRAS_LIMIT:
                self._extras.clear()
                self._plain_extras.clear()
            self._extras[raw] = parsed
            if not parsed[1]:
                self._plain_extras[raw] = parsed[0]
        return parsed

    def _type(self, raw):
        kind = self._types.get(raw)
        if kind is not None:
            return kind
        whole = _text(raw) if raw is not None else ""
        if not whole.strip():
            return None, ("missing_event_type",)
        text = whole[:MAX_TEXT].strip().upper()
        notes = ("oversized_value",) if len(whole) > MAX_TEXT else ()
        if text not in STANDARD_EVENT_TYPES:
            notes += ("unknown_event_type",)
        if len(self._types) < 10_000:
            self._types[raw] = (text, notes)
            if not notes:
                self._plain_types[raw] = text
        return text, notes

    @staticmethod
    def _lookup(column, plain: dict, read) -> tuple[list, dict]:
        """Values of a column through ``plain`` (one C pass); the rest through ``read`` (cached, so per row
        only for values with problems). Returns the values and {row: problems} of the rows that have any."""
        values = list(map(plain.get, column))
        noted: dict = {}
        if None in values:
            for i in [i for i, v in enumerate(values) if v is None]:
                values[i], notes = read(column[i])
                if notes:
                    noted[i] = notes
        return values, noted

    def _texts(self, cache: dict, column) -> list:
        """A text column as shared str objects (or None), through ``cache``: each distinct raw value (str, or
        bytes from a connection that skips decoding) is decoded once; long ones are noted in ``_long``."""
        try:
            return list(map(cache.__getitem__, column))
        except KeyError:
            if len(cache) > self.TEXTS_LIMIT:  # _long belongs to both caches: start all three afresh
                for values in (self._names, self._titles, self._long):
                    values.clear()
            cache[None] = None
            for raw in set(column) - cache.keys():
                text = cache[raw] = _text(raw)
                if len(text) > MAX_TEXT:
                    self._long.add(text)
            return list(map(cache.__getitem__, column))

    def parse(self, rows) -> Batch:
        """Rows in ``EVENT_COLUMNS`` order; the timestamp may come as epoch seconds already (a number: the
        database converted it) or as stored (text or datetime, parsed here). Returns columns of the usable
        rows; skipped and repaired rows are counted in ``health`` once per row and reason, like ``parse_row``.
        Work is done a column at a time; per-row Python runs only for values not seen before."""
        if not rows:
            return Batch([], [], [], [], [], [], [], [])
        ids, raw_ts, user_ids, user_names, raw_types, item_ids, item_titles, raw_extras = zip(*rows)
        if set(map(type, raw_ts)) <= _NUMBER:
            ts = list(raw_ts)
        else:
            ts = [t if type(t) in _NUMBER else parse_timestamp(t) for t in raw_ts]
        types, type_notes = self._lookup(raw_types, self._plain_types, self._type)
        extras, extra_notes = self._lookup(raw_extras, self._plain_extras, self._extra)
        health = self.health
        skipped = {i for i, t in enumerate(ts) if t is None} if None in ts else set()
        health.malformed(TABLE, "bad_timestamp", len(skipped)) if skipped else None
        if None in types:
            missing = {i for i, t in enumerate(types) if t is None} - skipped
            health.malformed(TABLE, "missing_event_type", len(missing)) if missing else None
            skipped |= missing
        # one object per name and title: later hashing and comparing (Counter keys, label caches) is by identity
        user_names, item_titles = self._texts(self._names, user_names), self._texts(self._titles, item_titles)
        oversized, long = set(), self._long
        for column in (user_names, item_titles):
            if long and not long.isdisjoint(column):
                oversized.update(i for i, v in enumerate(column) if v in long)
        reasons: Counter = Counter()
        for noted in (type_notes, extra_notes):
            for i, notes in noted.items():
                if i in skipped:
                    continue
                for reason in notes:
                    if reason == "oversized_value":
                        oversized.add(i)
                    else:
                        reasons[reason] += 1
        for reason, n in reasons.items():
            health.malformed(TABLE, reason, n)
        oversized -= skipped
        if oversized:
            health.malformed(TABLE, "oversized_value", len(oversized))
            for i in oversized:
                if user_names[i] is not None:
                    user_names[i] = user_names[i][:MAX_TEXT]
                if item_titles[i] is not None:
                    item_titles[i] = item_titles[i][:MAX_TEXT]
        columns = [list(ids), ts, list(user_ids), user_names, types, list(item_ids), item_titles, extras]
        if skipped:
            columns = [[v for j, v in enumerate(col) if j not in skipped] for col in columns]
        ids, ts, user_ids, user_names, types, item_ids, item_titles, extras = columns
        if not set(map(type, item_ids)) <= _INT_OR_NONE:
            item_ids = [_as_int(v) for v in item_ids]
        if not set(map(type, user_ids)) <= _INT_OR_NONE:
            user_ids = [_as_int(v) for v in user_ids]
        return Batch(ids, ts, user_ids, user_names, types, item_ids, item_titles, extras)


def gather(indices):
    """A function that picks the rows ``indices`` out of a column, as a tuple, at C speed (``itemgetter``)."""
    if len(indices) > 1:
        return itemgetter(*indices)
    return lambda column: tuple(column[i] for i in indices)


def _text(value) -> str:
    """A stored value as text: bytes (a BLOB, or TEXT read undecoded) as UTF-8, invalid bytes replaced; other
    values (odd databases store numbers in text columns) as ``str``."""
    if type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


_INT_OR_NONE = {int, type(None)}
_NESTED = frozenset({dict, list})
_NUMBER = {int, float}
