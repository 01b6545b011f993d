"""Daily usage reports (seed 001): one compact rollup per report day, kept for ``report_retention_days``.

A report day D is the half-open interval [D at ``report_start_time``, D+1 at ``report_start_time``) in
``config.timezone``, computed as instants with zoneinfo, so a day across a DST change lasts 23 or 25 hours.
If the start time does not exist on a date (spring-forward gap) zoneinfo's ``fold=0`` rule picks the instant;
if it exists twice (fall-back), the first occurrence starts the day.

Per day we keep only what the report needs: distinct user keys (ids, or names for rows without an id), the
non-login users, content views, 48 half-hour slot counts (local wall clock), a Counter of content items,
session sums and, with ``report_include_errors``, failed logins and API 5xx counts.

Definitions (the SQL in tests/test_daily.py checks each one):
- ``user_count``: distinct users with any event. A user is its ``user_id``, or its ``user_name`` when the id is
  NULL; rows with neither are not a user.
- ``active_users``: distinct users with an event other than LOGIN, LOGOUT, LOGIN_FAILED.
- ``content_views``: READ + DOWNLOAD + EMAIL events.
- ``peak_usage_time``: local ``HH:MM`` start of the 30-minute wall-clock slot with the most events; ties go to
  the slot that comes first in the report day (which starts at ``report_start_time``).
- ``average_session_duration``: a user's events split into sessions where the gap between consecutive events
  exceeds ``session_gap``; a session belongs to the day it starts. Like seed 000's gauge, only sessions with
  two or more events count (a lone event has no measurable duration); 0.0 when there are none. Sessions still
  open are included with their duration so far.
- ``top_10_content``: content items (READ/DOWNLOAD/EMAIL with an item id) by count desc, then id asc.
- ``failed_logins`` (LOGIN_FAILED) and ``api_5xx`` (OPDS_ACCESS/KOBO_SYNC/API_CALL with a 5xx ``status`` in
  ``extra_data``) when ``report_include_errors``.
"""

from __future__ import annotations

import threading
from collections import Counter
from itertools import compress, repeat
from operator import floordiv, not_
from operator import itemgetter
from datetime import date, datetime, time as dtime
from zoneinfo import ZoneInfo

from prometheus_client.core import GaugeMetricFamily

from exporter.aggregate.api import status_label
from exporter.aggregate.daycounts import FrozenCounts
from exporter.aggregate.sessions import Sessions
from exporter.aggregate.timebuckets import LocalTime
from exporter.aggregate.events import API_EVENT_TYPES, CONTENT_EVENT_TYPES, Batch, Event, merge_runs

_first = itemgetter(0)
LOGIN_TYPES = frozenset({"LOGIN", "LOGOUT", "LOGIN_FAILED"})
SLOTS = 48
TOP_CONTENT_DEFAULT = 10
STATE_VERSION = 1


def count_5xx(extras: list) -> int:
    """Requests answered 5xx, with the status read as the API metrics read it (``status`` or seed 002's
    ``status_code``, through ``status_label``), so a report's ``api_5xx`` and the dashboards' 5xx ratio count
    the same requests. Each distinct stored status is judged once."""
    statuses = [extra.get("status", extra.get("status_code")) for extra in extras]
    return sum(n for (status, _), n in Counter(zip(statuses, map(type, statuses))).items()
               if status_label(status)[0] == "5")


class DayBoundaries:
    """Maps UTC epoch seconds to report dates for a zone and a daily start time (DST-correct, cached)."""

    def __init__(self, zone_name: str, start_time: str):
        self.zone = None if zone_name == "local" else ZoneInfo(zone_name)
        hh, mm = start_time.split(":")
        self.start = dtime(int(hh), int(mm))
        self.start_minute = int(hh) * 60 + int(mm)
        self._bounds: dict[int, float] = {}
        self._hour_days: dict[int, tuple] = {}
        self._offset = LocalTime(zone_name).offset

    def bound(self, ordinal: int) -> float:
        """Epoch seconds when report day ``date.fromordinal(ordinal)`` starts."""
        b = self._bounds.get(ordinal)
        if b is None:
            naive = datetime.combine(date.fromordinal(ordinal), self.start)
            b = (naive.replace(tzinfo=self.zone) if self.zone is not None else naive.astimezone()).timestamp()
            if len(self._bounds) > 20000:
                self._bounds.clear()
            self._bounds[ordinal] = b
        return b

    def day_of(self, ts: float) -> int:
        """Ordinal of the report day containing ``ts`` (looked up once per UTC hour: an hour holds at most
        one day boundary)."""
        first, last, boundary, _ = self._hour(int(ts) // 3600)
        return first if boundary is None or ts < boundary else last

    def _hour(self, hour: int) -> tuple:
        """(day at the hour's start, day at its end, the boundary between them or None, UTC offset)."""
        entry = self._hour_days.get(hour)
        if entry is None:
            first, last = self._day_of(hour * 3600), self._day_of(hour * 3600 + 3599)
            entry = (first, last, self.bound(last) if last != first else None, self._offset(hour * 3600))
            if len(self._hour_days) > 100000:
                self._hour_days.clear()
            self._hour_days[hour] = entry
        return entry

    @property
    def unit(self) -> int:
        """The coarsest time unit (seconds) within which report day and half-hour slot cannot change: a
        quarter hour when days start on one (zone offsets are whole quarter hours), else a minute."""
        return 900 if self.start_minute % 15 == 0 else 60

    def places(self, units, size: int) -> dict:
        """{unit number: (report day ordinal, local half-hour slot)} for distinct ``ts // size`` numbers."""
        out = {}
        hour_entry = self._hour
        for unit in units:
            ts = unit * size
            first, last, boundary, offset = hour_entry(ts // 3600)
            out[unit] = (first if boundary is None or ts < boundary else last, int((ts + offset) % 86400) // 1800)
        return out

    def _day_of(self, ts: float) -> int:
        local = int(ts) + self._offset(ts)
        d = local // 86400 + 719163  # date(1970, 1, 1).toordinal() == 719163
        if ts < self.bound(d):
            d -= 1
            if ts < self.bound(d):
                d -= 1
        elif ts >= self.bound(d + 1):
            d += 1
        return d

    def interval(self, day: date) -> tuple[float, float]:
        o = day.toordinal()
        return self.bound(o), self.bound(o + 1)


class _Day:
    __slots__ = ("users", "active", "events", "content_views", "slots", "items", "session_sum", "session_n",
                 "failed_logins", "api_5xx")

    def __init__(self):
        self.users: set = set()
        self.active: set = set()
        self.events = 0
        self.content_views = 0
        self.slots = [0] * SLOTS
        self.items: Counter = Counter()
        self.session_sum = 0.0
        self.session_n = 0
        self.failed_logins = 0
        self.api_5xx = 0

    def state(self) -> dict:
        return {
            "users": sorted(self.users, key=str), "active": sorted(self.active, key=str), "events": self.events,
            "content_views": self.content_views, "slots": self.slots,
            "items": [[k, v] for k, v in self.items.items()], "session_sum": self.session_sum,
            "session_n": self.session_n, "failed_logins": self.failed_logins, "api_5xx": self.api_5xx,
        }

    @classmethod
    def from_state(cls, s: dict) -> "_Day":
        d = cls()
        d.users = set(s["users"])
        d.active = set(s["active"])
        d.events = s["events"]
        d.content_views = s["content_views"]
        d.slots = list(s["slots"])
        d.items = Counter({k: v for k, v in s["items"]})
        d.session_sum = s["session_sum"]
        d.session_n = s["session_n"]
        d.failed_logins = s.get("failed_logins", 0)
        d.api_5xx = s.get("api_5xx", 0)
        return d


class DailyFolder:
    """Folds activity events into per-day usage reports; a folder in the sense of ``exporter.aggregate``."""

    def __init__(self, config, health=None, sessions: Sessions | None = None):
        self.config = config
        self.health = health
        self.bounds = DayBoundaries(config.timezone, config.report_start_time)
        self.include_errors = bool(config.report_include_errors)
        self.retention_days = int(config.report_retention_days)
        self._days: dict[int, _Day] = {}
        self._titles: dict[int, str] = {}  # item id -> latest title, for items still in a kept day
        # A shared tracker is driven by its owner (the refresher); without one, this folder drives its own.
        self.sessions = sessions if sessions is not None else Sessions(config.session_gap)
        self._drives_sessions = sessions is None
        self.sessions.listeners.append(self._sessions_closed)
        self._oldest_kept = 0  # ordinal; events of older days are ignored (already past retention)
        self._lock = threading.RLock()  # report() may run on a web thread while the refresher folds

    # -- folder contract -------------------------------------------------------------------------------

    def fold(self, event: Event) -> None:
        self.fold_batch(Batch([event.id], [event.ts], [event.user_id], [event.user_name], [event.event_type],
                              [event.item_id], [event.item_title], [event.extra]))

    def fold_batch(self, batch) -> None:
        """Fold an ``exporter.aggregate.events.Batch`` a column at a time under one lock acquisition.

        Report day and half-hour slot are looked up once per run of rows in one quarter hour (or minute, for
        a start time off the quarter: ``Batch.runs``), and each day's rows, a slice as rows come in time
        order, are counted into its sets and ``Counter`` at C speed. Sessions come from the ``Sessions``
        tracker (``_sessions_closed``)."""
        if not len(batch):
            return
        size = self.bounds.unit
        runs = batch.runs(size)
        place = self.bounds.places({unit for unit, _, _ in runs}, size)
        keys = batch.user_keys()
        with self._lock:
            days, oldest = self._days, self._oldest_kept
            for ordinal, _ in place.values():
                self._day(ordinal)
            if self._drives_sessions:
                self.sessions.fold(keys, batch.ts)
            for unit, start, end in runs:
                ordinal, slot = place[unit]
                if ordinal >= oldest:  # rows for days past retention count nowhere
                    day = days[ordinal]
                    day.events += end - start
                    day.slots[slot] += end - start
            columns = (keys, batch.event_types, batch.item_ids, batch.item_titles, batch.extras)
            ranges = merge_runs(runs, {unit: p[0] for unit, p in place.items()})
            for ordinal, start, end in ranges:
                if ordinal >= oldest:
                    on_day = columns if len(ranges) == 1 else [column[start:end] for column in columns]
                    self._fold_day(days[ordinal], *on_day)
            self._freeze_before(max(ordinal for ordinal, _, _ in ranges) - 1)  # rows come roughly in time order

    def _fold_day(self, day: _Day, keys, types, items, titles, extras) -> None:
        day.users.update(keys)
        day.active.update(compress(keys, map(not_, map(LOGIN_TYPES.__contains__, types))))
        day.users.discard(None)
        day.active.discard(None)
        content = list(map(CONTENT_EVENT_TYPES.__contains__, types))
        day.content_views += sum(content)
        content_items = list(compress(items, content))
        if content_items:
            if type(day.items) is FrozenCounts:  # a late event for a finished day
                day.items = day.items.thaw()
            day.items.update(content_items)
            day.items.pop(None, None)
            content_titles = list(compress(titles, content))
            titled = dict(compress(zip(content_items, content_titles), content_titles))
            titled.pop(None, None)
            self._titles.update((item, title[:200]) for item, title in titled.items())
        day.failed_logins += types.count("LOGIN_FAILED")
        api_extras = list(compress(extras, map(API_EVENT_TYPES.__contains__, types)))
        if api_extras:
            day.api_5xx += count_5xx(api_extras)

    def _day(self, ordinal: int) -> _Day | None:
        """The rollup of report day ``ordinal``, made on first use; None for days past retention."""
        day = self._days.get(ordinal)
        if day is None and ordinal >= self._oldest_kept:
            day = self._days[ordinal] = _Day()
        return day

    def _sessions_closed(self, sessions: list) -> None:
        """Each closed session of two or more events counts on the report day it started (looked up once per
        distinct quarter hour or minute, like the rows)."""
        multi = [session for session in sessions if session[2] > 1]
        if not multi:
            return
        size = self.bounds.unit
        starts = list(map(_first, multi))
        units = list(map(floordiv, starts, repeat(size)))
        place = self.bounds.places(set(units), size)
        with self._lock:
            for unit, (start, last, _) in zip(units, multi):
                day = self._day(place[unit][0])
                if day is not None:
                    day.session_sum += last - start
                    day.session_n += 1

    def advance(self, now: float) -> None:
        """Close sessions idle longer than ``session_gap``; drop days older than ``report_retention_days``."""
        with self._lock:
            if self._drives_sessions:
                self.sessions.close_idle(now)
            self._freeze_before(self.bounds.day_of(now))
            oldest = self.bounds.day_of(now) - self.retention_days
            if oldest > self._oldest_kept:
                self._oldest_kept = oldest
                for ordinal in [o for o in self._days if o < oldest]:
                    del self._days[ordinal]
                if self._titles:
                    kept = set()
                    for day in self._days.values():
                        kept.update(day.items)
                    self._titles = {k: v for k, v in self._titles.items() if k in kept}

    def _freeze_before(self, ordinal: int) -> None:
        """Finished days keep their item counts in arrays: a sixth of the memory of a Counter."""
        for day_ordinal, day in self._days.items():
            if day_ordinal < ordinal and type(day.items) is not FrozenCounts:
                day.items = FrozenCounts(day.items)

    def last_complete_day(self, now: float) -> date:
        return date.fromordinal(self.bounds.day_of(now) - 1)

    def families(self, now: float) -> list:
        """Gauges for the last complete report day (zeros when it had no events)."""
        day = self.last_complete_day(now)
        rep = self.report(day) or {}
        start, _ = self.bounds.interval(day)
        out = []
        for name, doc, value in (
            ("activity_daily_report_start_timestamp_seconds", "Start of the last complete report day.", start),
            ("activity_daily_report_users", "Distinct users with any event on the last complete report day.",
             rep.get("user_count", 0)),
            ("activity_daily_report_active_users",
             "Distinct users with a non-login event on the last complete report day.", rep.get("active_users", 0)),
            ("activity_daily_report_content_views",
             "Reads, downloads and sends on the last complete report day.", rep.get("content_views", 0)),
            ("activity_daily_report_average_session_duration_seconds",
             "Average session duration (sessions of 2+ events) started on the last complete report day.",
             rep.get("average_session_duration", 0.0)),
        ):
            out.append(GaugeMetricFamily(name, doc, value=value))
        if self.include_errors:
            out.append(GaugeMetricFamily("activity_daily_report_failed_logins",
                                         "Failed logins on the last complete report day.",
                                         value=rep.get("failed_logins", 0)))
            out.append(GaugeMetricFamily("activity_daily_report_api_5xx",
                                         "API requests answered 5xx on the last complete report day.",
                                         value=rep.get("api_5xx", 0)))
        return out

    def state(self) -> dict:
        with self._lock:
            return {
                "version": STATE_VERSION,
                "start_time": self.config.report_start_time,
                "timezone": self.config.timezone,
                "days": {str(o): d.state() for o, d in self._days.items()},
                "titles": [[k, v] for k, v in self._titles.items()],
                "open": self.sessions.state(),
                "oldest_kept": self._oldest_kept,
            }

    def load_state(self, s: dict) -> None:
        """Restore a checkpoint; one taken with another day boundary or zone is ignored (days would differ)."""
        if not s or s.get("version") != STATE_VERSION:
            return
        if s.get("start_time") != self.config.report_start_time or s.get("timezone") != self.config.timezone:
            return
        with self._lock:
            self._days = {int(o): _Day.from_state(d) for o, d in s.get("days", {}).items()}
            self._titles = {k: v for k, v in s.get("titles", [])}
            self.sessions.load_state(s.get("open", []))
            self._oldest_kept = int(s.get("oldest_kept", 0))

    # -- reports ---------------------------------------------------------------------------------------

    def days(self) -> list[date]:
        with self._lock:
            return [date.fromordinal(o) for o in sorted(self._days)]

    def report(self, day: date, limit: int = TOP_CONTENT_DEFAULT, offset: int = 0) -> dict | None:
        """Seed 001's report for ``day``, or None when no event fell on it (or it is past retention)."""
        ordinal = day.toordinal()
        with self._lock:
            d = self._days.get(ordinal)
            if d is None:
                return None
            session_sum, session_n = d.session_sum, d.session_n
            for s in list(self.sessions.open.values()):  # atomic copy: the refresher may fold meanwhile
                if s[2] >= 2 and self.bounds.day_of(s[0]) == ordinal:
                    session_sum += s[1] - s[0]
                    session_n += 1
            ranked = sorted(d.items.items(), key=lambda kv: (-kv[1], kv[0]))
            top = [{"item_id": k, "title": self._titles.get(k), "count": v}
                   for k, v in ranked[offset:offset + limit]]
            report = {
                "date": day.isoformat(),
                "user_count": len(d.users),
                "content_views": d.content_views,
                "active_users": len(d.active),
                "peak_usage_time": self._peak(d.slots),
                "average_session_duration": round(session_sum / session_n, 3) if session_n else 0.0,
                "top_10_content": top,
                "total_events": d.events,
                "sessions": session_n,
                "distinct_content": len(d.items),
            }
            if self.include_errors:
                report["failed_logins"] = d.failed_logins
                report["api_5xx"] = d.api_5xx
            return report

    def _peak(self, slots: list) -> str | None:
        start = self.bounds.start_minute
        best, best_key = None, None
        for slot, count in enumerate(slots):
            if count == 0:
                continue
            key = (-count, (slot * 30 - start) % 1440)
            if best_key is None or key < best_key:
                best, best_key = slot, key
        if best is None:
            return None
        return f"{best // 2:02d}:{(best % 2) * 30:02d}"
