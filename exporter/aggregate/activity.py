"""User-activity aggregation (seed 000, User Activity tab): events folded into counters and window state.

Counters only ever grow. Window gauges are exact:
- distinct counts (active users, books read) keep each user's / book's last-seen time, so a window is a true
  sliding window ``(now - window, now]``;
- top books and average session duration are kept per local calendar day; window ``Nd`` covers today and
  the ``N-1`` days before it, in the configured time zone.
"""

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_left
from collections import Counter, deque
from itertools import compress, repeat
from operator import floordiv, itemgetter, sub

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from exporter.aggregate.daycounts import DayCounts, WindowSums
from exporter.aggregate.events import CONTENT_EVENT_TYPES, STANDARD_EVENT_TYPES, Batch, Event, gather, merge_runs
from exporter.aggregate.labels import LabelCap, clean
from exporter.aggregate.sessions import Sessions
from exporter.aggregate.timebuckets import LocalTime
from exporter.config import Config, format_duration

SESSION_BUCKETS = (60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, float("inf"))
MAX_PENDING_SEARCHES_PER_USER = 100
DAY = 86400
_SPECIAL_TYPES = CONTENT_EVENT_TYPES | {"SEARCH", "SHELF_ADD", "SHELF_REMOVE"}
_first, _second = itemgetter(0), itemgetter(1)


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _labels_of(cache: dict, values: list, make) -> list:
    """``make(value)`` for each value, through ``cache``: only values not seen before reach ``make``."""
    try:
        return list(map(cache.__getitem__, values))
    except KeyError:
        if len(cache) > 100000:
            cache.clear()
        for value in set(values) - cache.keys():
            cache[value] = make(value)
        return list(map(cache.__getitem__, values))


class UserLabels:
    """Maps (user_id, user_name) to the ``user`` label per ``user_label`` mode, capped by ``user_cap``."""

    def __init__(self, mode: str, cap: int, admitted=()):
        self.mode = mode
        self.cap = LabelCap(cap, admitted)
        self._cache: dict = {}

    def labels(self, user_ids, user_names) -> list:
        """Labels for two columns at once; only pairs not seen before are labelled (``_label``)."""
        return _labels_of(self._cache, list(zip(user_ids, user_names)), self._label)

    def __call__(self, user_id, user_name) -> str:
        label = self._cache.get((user_id, user_name))
        return label if label is not None else self.labels([user_id], [user_name])[0]

    def _label(self, pair) -> str:
        user_id, user_name = pair
        if self.mode == "none":
            return ""
        if self.mode == "id":
            raw = "unknown" if user_id is None else str(user_id)
        elif user_name:
            raw = clean(user_name)
        else:
            raw = "unknown" if user_id is None else f"User{user_id}"
        if self.mode == "hash" and raw != "unknown":
            raw = hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:12]
        return self.cap(raw)


class ActivityFolder:
    """Folds ``cwa_user_activity`` events into the User Activity metrics of METRICS.md."""

    def __init__(self, config: Config, health=None, sessions: Sessions | None = None):
        self.config = config
        self.clock = LocalTime(config.timezone)
        self.windows = list(config.windows)
        self.users = UserLabels(config.user_label, config.user_cap)
        self._format_labels: dict = {}  # raw format -> label (fixed once given, like every capped label)
        self._event_labels: dict = {}  # (event_type, user_id, user_name) -> events key (labels are fixed once given)
        cap = config.label_cap
        self.event_types = LabelCap(len(STANDARD_EVENT_TYPES) + cap, STANDARD_EVENT_TYPES)
        self.formats = LabelCap(cap)
        self.sources = LabelCap(cap)
        self.devices = LabelCap(cap)
        self.shelves = LabelCap(cap)
        # counters
        self.events: Counter = Counter()  # (event_type, user)
        self.format_events: Counter = Counter()  # (event_type, format, user)
        self.discovery: Counter = Counter()  # source
        self.device_events: Counter = Counter()  # device_type
        self.by_hour: Counter = Counter()  # (weekday, hour)
        self.shelf_changes: Counter = Counter()  # (shelf, action)
        self.search_successes = 0
        self.session_buckets = [0] * len(SESSION_BUCKETS)
        self.session_sum = 0.0
        # window state
        self.user_last_seen: dict = {}
        self.book_last_read: dict = {}
        self.day_book_counts = DayCounts()  # local day -> item_id -> READ+DOWNLOAD+EMAIL count
        self.window_sums = WindowSums(self.day_book_counts)
        self.day_sessions: dict[int, list] = {}  # local day of session start -> [sum seconds, count]
        self.titles: dict = {}
        # A shared tracker is driven by its owner (the refresher); without one, this folder drives its own.
        self.sessions = sessions if sessions is not None else Sessions(config.session_gap)
        self._drives_sessions = sessions is None
        self.sessions.listeners.append(self._sessions_closed)
        self.pending_searches: dict = {}  # user key -> [search ts, ...]
        self.recent_searches: deque = deque(maxlen=max(config.recent_searches, 1))

    # -- folding -----------------------------------------------------------------------------------------

    def fold(self, event: Event) -> None:
        self.fold_batch(Batch([event.id], [event.ts], [event.user_id], [event.user_name], [event.event_type],
                              [event.item_id], [event.item_title], [event.extra]))

    def fold_batch(self, batch: Batch) -> None:
        """Fold a chunk of rows, in id order. Whole columns are counted with ``Counter`` (C speed), the rows a
        metric needs are picked out with ``gather``; sessions walk the rows, search success the special ones."""
        if not len(batch):
            return
        ts_col, extras, types = batch.ts, batch.extras, batch.event_types
        users, labelled, events = self.users, self._event_labels, self.events
        for raw, n in batch.type_user_counts().items():
            key = labelled.get(raw)
            if key is None:
                if len(labelled) > 100000:
                    labelled.clear()
                key = labelled[raw] = (self.event_types(raw[0]), users(raw[1], raw[2]))
            events[key] += n
        for quarter, n in batch.quarter_counts().items():
            self.by_hour[self.clock.weekday_hour(quarter * 900)] += n
        for device, n in batch.device_counts().items():
            self.device_events[self.devices(clean(device).lower() if device else "unknown")] += n

        keys = batch.user_keys()
        if self._drives_sessions:
            self.sessions.fold(keys, ts_col)
        last_seen, open_sessions = self.user_last_seen, self.sessions.open
        for key in set(keys):
            if key is not None and open_sessions[key][1] > last_seen.get(key, -1.0):
                last_seen[key] = open_sessions[key][1]  # an open session ends at its user's latest event

        special = list(compress(range(len(types)), map(_SPECIAL_TYPES.__contains__, types)))
        if not special:
            return
        content = [i for i in special if types[i] in CONTENT_EVENT_TYPES]
        if content:
            self._fold_content(batch, content)
        searches = [i for i in special if types[i] == "SEARCH"]
        if searches or (content and self.pending_searches):  # a read may answer a search of an earlier chunk
            self._searches(batch, sorted(searches + content), searches)
        shelf_rows = Counter([(extras[i].get("shelf") or extras[i].get("shelf_name"), types[i])
                              for i in special if types[i] in ("SHELF_ADD", "SHELF_REMOVE")])
        for (shelf, etype), n in shelf_rows.items():
            shelf = self.shelves(clean(shelf, 64) if shelf else "unknown")
            self.shelf_changes[(shelf, "add" if etype == "SHELF_ADD" else "remove")] += n

    def _fold_content(self, batch: Batch, content: list) -> None:
        """Reads, downloads and sends (rows ``content``): formats, discovery, books per day, books last read,
        titles."""
        pick = gather(content)
        types, extras, items, ts = pick(batch.event_types), pick(batch.extras), pick(batch.item_ids), pick(batch.ts)
        users = self.users.labels(pick(batch.user_ids), pick(batch.user_names))
        # (a comprehension reads a key of each dict in half the time of ``map(methodcaller(...))``)
        formats = _labels_of(self._format_labels, [extra.get("format") for extra in extras], self._format)
        self.format_events.update(zip(types, formats, users))  # counted straight into the counter, in C
        sources = [extra.get("source") for extra in compress(extras, map("EMAIL".__ne__, types))]
        for source, n in Counter(sources).items():
            self.discovery[self.sources(clean(source, 32).lower() if source else "unknown")] += n

        runs = batch.runs()
        day_of = {quarter: self.clock.day(quarter * 900) for quarter, _, _ in runs}
        last_day = None
        for day, start, end in merge_runs(runs, day_of):  # the content rows of each day's range of rows
            first, stop = bisect_left(content, start), bisect_left(content, end)
            if first == stop:
                continue
            on_day = items[first:stop]
            on_day = [item for item in on_day if item is not None] if None in on_day else on_day
            self.day_book_counts.add_items(day, on_day)
            self.window_sums.late_items(day, on_day)  # counts only where a window already summed that day
            last_day = day if last_day is None else max(last_day, day)
        self.day_book_counts.freeze_before(last_day - 1)  # rows come roughly in time order

        reads = list(map("READ".__eq__, types))
        read_items, read_ts = list(compress(items, reads)), list(compress(ts, reads))
        pairs = zip(read_items, read_ts) if sorted(read_ts) == read_ts else \
            sorted(zip(read_items, read_ts), key=_second)  # rows come in time order, but for late commits
        latest = dict(pairs)  # the last time of each book is its latest
        latest.pop(None, None)
        book_read = self.book_last_read
        for item, t in latest.items():
            if t > book_read.get(item, -1.0):
                book_read[item] = t
        titled = dict(compress(zip(items, pick(batch.item_titles)), pick(batch.item_titles)))
        titled.pop(None, None)
        self.titles.update(titled)

    def _format(self, fmt) -> str:
        return self.formats(clean(fmt, 16).upper() if fmt else "UNKNOWN")

    def _searches(self, batch: Batch, in_order: list, searches: list) -> None:
        """Searches wait for a read, download or send by the same user (``in_order``: those rows and the
        searches, in row order); the last ``recent_searches`` searches (row indices ``searches``) are kept."""
        keys, ts, types = batch.user_keys(), batch.ts, batch.event_types
        pending = self.pending_searches
        for i in in_order:
            key = keys[i]
            if types[i] == "SEARCH":
                if key is not None:
                    waiting = pending.setdefault(key, [])
                    if len(waiting) >= MAX_PENDING_SEARCHES_PER_USER:
                        waiting.pop(0)
                    waiting.append(ts[i])
            elif key in pending:
                self._search_success(key, ts[i])
        if not (self.config.recent_searches_enabled and self.config.recent_searches):
            return
        for i in searches[-self.config.recent_searches:]:  # older ones would leave the deque at once
            extra = batch.extras[i]
            query = extra.get("query")
            if query is None and extra.get("format") is not None and len(extra) == 1:
                query = extra.get("format")  # legacy plain-string extra_data on a SEARCH is the query
            user = self.users(batch.user_ids[i], batch.user_names[i])
            self.recent_searches.append((ts[i], clean(query if query is not None else "", 100), user))

    def _sessions_closed(self, sessions: list) -> None:
        """Closed sessions of two or more events (a single event has no duration, seed 000: 'user has
        multiple events') into the histogram and their start day's sums, a column at a time."""
        multi = [session for session in sessions if session[2] > 1]
        if not multi:
            return
        starts = list(map(_first, multi))
        durations = list(map(sub, map(_second, multi), starts))
        self.session_sum += sum(durations)
        for bucket, n in Counter(map(bisect_left, repeat(SESSION_BUCKETS), durations)).items():
            self.session_buckets[bucket] += n  # the first bound >= duration: le semantics
        quarters = list(map(floordiv, starts, repeat(900)))  # zone offsets are whole quarters
        day_of = {quarter: self.clock.day(quarter * 900) for quarter in set(quarters)}
        days = list(map(day_of.__getitem__, quarters))
        distinct = set(days)
        for day in distinct:
            on_day = durations if len(distinct) == 1 else list(compress(durations, map(day.__eq__, days)))
            stats = self.day_sessions.get(day)
            if stats is None:
                self.day_sessions[day] = [sum(on_day), len(on_day)]
            else:
                stats[0] += sum(on_day)
                stats[1] += len(on_day)

    def _search_success(self, key, ts: float) -> None:
        """A search succeeds when the same user reads, downloads or sends within the window after it."""
        pending = self.pending_searches.get(key)
        if not pending:
            return
        window = self.config.search_success_window
        keep = []
        for searched in pending:
            delta = ts - searched
            if 0 <= delta <= window:
                self.search_successes += 1
            elif delta < 0:
                keep.append(searched)
        if keep:
            self.pending_searches[key] = keep
        else:
            del self.pending_searches[key]

    def advance(self, now: float) -> None:
        """Close sessions idle longer than the gap; drop state no window can see any more."""
        if self._drives_sessions:
            self.sessions.close_idle(now)
        window = self.config.search_success_window
        for key, pending in list(self.pending_searches.items()):
            pending[:] = [t for t in pending if now - t <= window]
            if not pending:
                del self.pending_searches[key]
        today = self.clock.day(now)
        oldest_day = today - int(max(self.windows) // DAY) - 1
        self.day_book_counts.freeze_before(today)
        self.day_book_counts.drop_before(oldest_day)
        for day in [d for d in self.day_sessions if d < oldest_day]:
            del self.day_sessions[day]

    # -- windows -----------------------------------------------------------------------------------------

    def _window_days(self, now: float, window: float) -> tuple[int, int]:
        today = self.clock.day(now)
        return today, today - max(int(window // DAY), 1) + 1

    def top_books(self, now: float, window: float) -> list[tuple]:
        today, first = self._window_days(now, window)
        past = self.window_sums.past(today, today - first + 1)
        totals = dict(past)  # a C copy; only today's items are added in Python
        for item, n in self.day_book_counts.items(today):
            totals[item] = totals.get(item, 0) + n
        if not totals:
            return []
        # The N-th highest count, found over plain ints; only books at or above it are ranked by (count, id).
        threshold = heapq.nlargest(self.config.top_books, totals.values())[-1]
        contenders = [kv for kv in totals.items() if kv[1] >= threshold]
        top = sorted(contenders, key=lambda kv: (-kv[1], kv[0]))[:self.config.top_books]
        return [(item, clean(self.titles.get(item, "")), count) for item, count in top]

    def average_session(self, now: float, window: float) -> float:
        today, first = self._window_days(now, window)
        total = count = 0
        for day, (seconds, n) in self.day_sessions.items():
            if first <= day <= today:
                total += seconds
                count += n
        return total / count if count else 0.0

    @staticmethod
    def _count_since(sorted_times: list, since: float) -> int:
        return len(sorted_times) - bisect_left(sorted_times, since)

    # -- exposition --------------------------------------------------------------------------------------

    def families(self, now: float) -> list:
        out = []
        events = CounterMetricFamily("activity_events", "User activity events by type and user.", labels=["event_type", "user"])
        for (etype, user), n in sorted(self.events.items()):
            events.add_metric([etype, user], n)
        out.append(events)

        active = GaugeMetricFamily("activity_active_users", "Distinct users with any event in the window.", labels=["window"])
        books = GaugeMetricFamily("activity_books_read", "Distinct books opened in the reader in the window.", labels=["window"])
        avg = GaugeMetricFamily(
            "activity_average_session_duration_seconds",
            "Average length of sessions with more than one event that started in the window (local days).",
            labels=["window"],
        )
        top = GaugeMetricFamily(
            "activity_top_books", "Top books by reads + downloads + sends in the window (local days).",
            labels=["window", "book_id", "title"],
        )
        user_times = sorted(self.user_last_seen.values())
        book_times = sorted(self.book_last_read.values())
        for window in self.windows:
            label = format_duration(window)
            active.add_metric([label], self._count_since(user_times, now - window))
            books.add_metric([label], self._count_since(book_times, now - window))
            avg.add_metric([label], self.average_session(now, window))
            for item, title, count in self.top_books(now, window):
                top.add_metric([label, str(item), title], count)
        out += [active, books, avg, top]

        fmt = CounterMetricFamily(
            "activity_format_events", "Reads, downloads and sends by book format and user.",
            labels=["event_type", "format", "user"],
        )
        for (etype, form, user), n in sorted(self.format_events.items()):
            fmt.add_metric([etype, form, user], n)
        out.append(fmt)
        out.append(self._counter("activity_discovery", "How users found the books they read or downloaded.", "source", self.discovery))
        out.append(self._counter("activity_device_events", "Events by client device type.", "device_type", self.device_events))

        hours = CounterMetricFamily(
            "activity_events_by_hour",
            f"Events by local weekday (0 = Sunday) and hour in {self.config.timezone}.",
            labels=["weekday", "hour"],
        )
        for (weekday, hour), n in sorted(self.by_hour.items()):
            hours.add_metric([str(weekday), str(hour)], n)
        out.append(hours)

        recent = GaugeMetricFamily(
            "activity_recent_search_timestamp_seconds", "When the most recent searches were made.", labels=["query", "user"]
        )
        if self.config.recent_searches_enabled:
            latest: dict = {}
            for ts, query, user in list(self.recent_searches)[-self.config.recent_searches:]:
                latest[(query, user)] = max(ts, latest.get((query, user), 0))
            for (query, user), ts in latest.items():
                recent.add_metric([query, user], ts)
        out.append(recent)

        out.append(CounterMetricFamily(
            "activity_search_successes",
            "Searches followed by a read, download or send by the same user within the success window.",
            value=self.search_successes,
        ))
        hist = HistogramMetricFamily("activity_session_duration_seconds", "Length of sessions with more than one event.")
        cumulative, buckets = 0, []
        for bound, n in zip(SESSION_BUCKETS, self.session_buckets):
            cumulative += n
            buckets.append((_bucket_label(bound), cumulative))
        hist.add_metric([], buckets, self.session_sum)
        out.append(hist)

        shelves = CounterMetricFamily("activity_shelf_changes", "Books added to and removed from shelves.", labels=["shelf", "action"])
        for (shelf, action), n in sorted(self.shelf_changes.items()):
            shelves.add_metric([shelf, action], n)
        out.append(shelves)
        return out

    @staticmethod
    def _counter(name, doc, label, counts):
        family = CounterMetricFamily(name, doc, labels=[label])
        for value, n in sorted(counts.items()):
            family.add_metric([value], n)
        return family

    # -- checkpoint --------------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "events": [[e, u, n] for (e, u), n in self.events.items()],
            "format_events": [[e, f, u, n] for (e, f, u), n in self.format_events.items()],
            "discovery": dict(self.discovery),
            "device_events": dict(self.device_events),
            "by_hour": [[w, h, n] for (w, h), n in self.by_hour.items()],
            "shelf_changes": [[s, a, n] for (s, a), n in self.shelf_changes.items()],
            "search_successes": self.search_successes,
            "session_buckets": self.session_buckets,
            "session_sum": self.session_sum,
            "user_last_seen": [[k, t] for k, t in self.user_last_seen.items()],
            "book_last_read": [[k, t] for k, t in self.book_last_read.items()],
            "day_book_counts": self.day_book_counts.state(),
            "day_sessions": {str(d): v for d, v in self.day_sessions.items()},
            "titles": [[k, t] for k, t in self.titles.items()],
            "open_sessions": self.sessions.state(),
            "pending_searches": [[k, p] for k, p in self.pending_searches.items()],
            "recent_searches": list(self.recent_searches),
            "labels": {
                "user": self.users.cap.state(), "event_type": self.event_types.state(), "format": self.formats.state(),
                "source": self.sources.state(), "device": self.devices.state(), "shelf": self.shelves.state(),
            },
        }

    def load_state(self, s: dict) -> None:
        self.events = Counter({(e, u): n for e, u, n in s["events"]})
        self.format_events = Counter({(e, f, u): n for e, f, u, n in s["format_events"]})
        self.discovery = Counter(s["discovery"])
        self.device_events = Counter(s["device_events"])
        self.by_hour = Counter({(w, h): n for w, h, n in s["by_hour"]})
        self.shelf_changes = Counter({(sh, a): n for sh, a, n in s["shelf_changes"]})
        self.search_successes = s["search_successes"]
        self.session_buckets = list(s["session_buckets"])
        self.session_sum = s["session_sum"]
        self.user_last_seen = {k: t for k, t in s["user_last_seen"]}
        self.book_last_read = {k: t for k, t in s["book_last_read"]}
        self.day_book_counts.load_state(s["day_book_counts"])
        self.window_sums = WindowSums(self.day_book_counts)
        self.day_sessions = {int(d): list(v) for d, v in s["day_sessions"].items()}
        self.titles = {k: t for k, t in s["titles"]}
        self.sessions.load_state(s["open_sessions"])
        self.pending_searches = {k: list(p) for k, p in s["pending_searches"]}
        self.recent_searches.extend(tuple(r) for r in s["recent_searches"])
        labels = s["labels"]
        self._event_labels.clear()
        self._format_labels.clear()
        self.users._cache.clear()
        self.users.cap.admitted = set(labels["user"])
        for cap, name in ((self.event_types, "event_type"), (self.formats, "format"), (self.sources, "source"),
                          (self.devices, "device"), (self.shelves, "shelf")):
            cap.admitted = set(labels[name])
