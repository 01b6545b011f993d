"""History backfill: the past of the main counters as OpenMetrics with timestamps, for ``promtool tsdb
create-blocks-from openmetrics``, so dashboards show the time before the exporter was installed.

Written families (same names and label rules as the live exporter, so the series join up):
- ``activity_events_total{event_type, user}``: ``user`` by ``config.user_label`` / ``user_cap`` and the event
  type cap, via the live folder's own ``UserLabels`` and ``LabelCap``; admission order is id order, as live.
- ``activity_api_requests_total{category, endpoint, method, status}``: labels derived by the live
  ``ApiFolder`` itself.
- ``calibre_books``: books whose Calibre ``timestamp`` (date added) is before the sample time, when
  ``calibre_library`` is set (books deleted since are unknown, so the past is a lower bound).

Samples are at multiples of ``step`` (epoch-aligned, so 1h/1d steps fall on UTC hour/day starts). A counter's
value at time t counts events with timestamp < t, so ``value(T2) - value(T1)`` is exactly the number of events
in [T1, T2). A series starts with a 0 sample one step before its first event, so ``increase()`` sees the first
events too. Every series runs densely until ``end`` (default: now). Families are written one after the other,
each series' samples in ascending time, then ``# EOF``: the order promtool's OpenMetrics parser requires.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from sqlalchemy import text

from exporter.aggregate.activity import UserLabels
from exporter.aggregate.api import ApiFolder
from exporter.aggregate.events import API_EVENT_TYPES, EVENT_COLUMNS, STANDARD_EVENT_TYPES, TABLE, \
    parse_row, parse_timestamp
from exporter.aggregate.health import Health
from exporter.aggregate.labels import LabelCap
from exporter.db import reader_engine

EVENTS_HELP = "User activity events by type and user."
API_HELP = "API requests by category, endpoint pattern, method and status."
BOOKS_HELP = "Books in the Calibre library."


class _LastKey(Counter):
    """A Counter that remembers the key last written: which series the live ``ApiFolder`` just incremented."""

    last = None

    def __setitem__(self, key, value):
        self.last = key
        super().__setitem__(key, value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names, values, extra: dict) -> str:
    pairs = list(extra.items()) + [(n, v) for n, v in zip(names, values) if v != ""]
    if not pairs:
        return ""
    return "{" + ",".join(f'{n}="{_escape(str(v))}"' for n, v in pairs) + "}"


def _fmt_ts(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _write_counter_family(out, family: str, help_text: str, label_names, series: dict, step: float,
                          first_k: int, last_k: int, extra: dict) -> int:
    """Cumulative samples per series from one step before its first event to ``last_k``; returns samples."""
    out.write(f"# TYPE {family} counter\n# HELP {family} {help_text}\n")
    written = 0
    for key in sorted(series):
        increments = series[key]
        start = max(min(increments) - 1, first_k)
        labels = _labels(label_names, key, extra)
        total = sum(n for k, n in increments.items() if k < start)
        lines = []
        for k in range(start, last_k + 1):
            total += increments.get(k, 0)
            lines.append(f"{family}_total{labels} {total} {_fmt_ts(k * step)}\n")
        out.writelines(lines)
        written += len(lines)
    return written


def read_events(engine, chunk_size: int, health: Health, progress=None):
    """Parsed events in id order, read in chunks by id (``id > last``) so memory stays flat."""
    with engine.connect() as conn:
        total, max_id = conn.execute(text(f"SELECT COUNT(*), MAX(id) FROM {TABLE}")).one()
    last, done = -1, 0
    cols = ", ".join(EVENT_COLUMNS)
    while max_id is not None and last < max_id:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT {cols} FROM {TABLE} WHERE id > :last ORDER BY id LIMIT :n"),
                                {"last": last, "n": chunk_size}).fetchall()
        if not rows:
            break
        for row in rows:
            event = parse_row(row, health)
            if event is not None:
                yield event
        last = rows[-1][0]
        done += len(rows)
        if progress is not None:
            progress(done, total or 0)


def write_openmetrics(config, out_path: str, step_seconds: float, progress=None, end: float | None = None,
                      start: float | None = None, extra_labels: dict | None = None) -> dict:
    """Write the backfill file; returns a summary (series, samples, first and last sample time).

    ``start`` drops samples before it (values stay cumulative over all history); ``end`` defaults to now;
    ``extra_labels`` (e.g. ``{"job": "activity-exporter", "instance": "host:9712"}``) are added to every series
    so the backfilled series continue the scraped ones.
    """
    if step_seconds <= 0:
        raise ValueError("step must be positive")
    step = float(step_seconds)
    end = time.time() if end is None else float(end)
    last_k = math.floor(end / step)
    floor_k = math.floor(start / step) if start is not None else None
    extra = dict(extra_labels or {})
    health = Health()

    users = UserLabels(config.user_label, config.user_cap)
    event_types = LabelCap(len(STANDARD_EVENT_TYPES) + config.label_cap, STANDARD_EVENT_TYPES)
    api = ApiFolder(config, health)
    api.requests = _LastKey()
    events: dict = {}
    requests: dict = {}
    skipped_after_end = 0
    engine = reader_engine(config.activity_db)
    try:
        for event in read_events(engine, config.chunk_size, health, progress):
            # labels first, in id order like the live exporter, even for events after ``end``
            key = (event_types(event.event_type), users(event.user_id, event.user_name))
            api_key = None
            if event.event_type in API_EVENT_TYPES:
                api.fold(event)
                api_key = api.requests.last
            k = math.floor(event.ts / step) + 1  # first sample time that counts this event
            if k > last_k:
                skipped_after_end += 1
                continue
            bucket = events.setdefault(key, Counter())
            bucket[k] += 1
            if api_key is not None:
                requests.setdefault(api_key, Counter())[k] += 1
    finally:
        engine.dispose()

    books: Counter = Counter()
    if config.calibre_library:
        lib = reader_engine(config.calibre_library)
        try:
            with lib.connect() as conn:
                for (raw,) in conn.execute(text("SELECT timestamp FROM books")):
                    ts = parse_timestamp(raw)
                    if ts is not None:
                        books[min(math.floor(ts / step) + 1, last_k)] += 1
        finally:
            lib.dispose()

    firsts = [min(c) for c in list(events.values()) + list(requests.values()) if c] + ([min(books)] if books else [])
    first_k = (min(firsts) - 1) if firsts else last_k
    if floor_k is not None:
        first_k = max(first_k, floor_k)
    samples = 0
    with open(out_path, "w", encoding="utf-8") as out:
        samples += _write_counter_family(out, "activity_events", EVENTS_HELP, ("event_type", "user"), events,
                                         step, first_k, last_k, extra)
        samples += _write_counter_family(out, "activity_api_requests", API_HELP,
                                         ("category", "endpoint", "method", "status"), requests, step, first_k,
                                         last_k, extra)
        if config.calibre_library:
            out.write(f"# TYPE calibre_books gauge\n# HELP calibre_books {BOOKS_HELP}\n")
            labels = _labels((), (), extra)
            total = sum(n for k, n in books.items() if k < first_k)
            for k in range(first_k, last_k + 1):
                total += books.get(k, 0)
                out.write(f"calibre_books{labels} {total} {_fmt_ts(k * step)}\n")
                samples += 1
        out.write("# EOF\n")
    return {"series": len(events) + len(requests) + (1 if config.calibre_library else 0), "samples": samples,
            "first": first_k * step, "last": last_k * step, "skipped_after_end": skipped_after_end,
            "malformed": sum(health.malformed_rows.values())}
