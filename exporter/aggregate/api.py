"""API usage (OPDS, Kobo Sync, REST API, Web UI) from stored OPDS_ACCESS / KOBO_SYNC / API_CALL events.

Only events whose type is in ``API_EVENT_TYPES`` are folded. Every label is bounded, because endpoints,
methods and statuses are stored from requests and thus client-controlled:
- ``endpoint``: ``extra["endpoint"]`` (or ``extra["path"]``). A Flask url rule (``/opds/<int:book_id>``) is kept;
  a raw path is normalised (ids, UUIDs, tokens -> ``*``, plus ``config.endpoint_normalization``); then at most
  ``config.endpoint_cap`` distinct patterns, later new ones ``other``. Missing -> ``unknown``.
- ``category``: ``extra["category"]`` when it is a known category (those of ``config.api_category_rules`` and
  ``Web UI``); otherwise the first matching rule for the endpoint; with no endpoint at all, the event type's
  own category (OPDS_ACCESS -> OPDS, KOBO_SYNC -> Kobo Sync, API_CALL -> REST API) when that is configured.
- ``method``: upper-cased HTTP method from an allow-list, else ``other``; missing -> ``unknown``.
- ``status``: an integer HTTP status 100-599 as text (``"200"``), other integers ``other``; CWA's own
  ``"success"`` / ``"error"`` strings and missing statuses -> ``unknown`` (they say nothing about HTTP).
- ``weekday``/``hour``: in ``config.timezone`` (``local`` = machine zone), weekday 0 = Sunday.
The duration histogram observes ``extra["duration_ms"]`` (or ``response_time_ms``, seed 002's name) in
seconds; events without a usable duration (CWA's own rows) are counted in the requests but not observed.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from itertools import compress

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from ..endpoints import categorize, normalize_endpoint
from .events import API_EVENT_TYPES, TABLE, Batch
from .labels import OTHER, LabelCap, clean
from .timebuckets import LocalTime

#: Seconds; suited to web requests from a few ms (OPDS feed from cache) to slow Kobo syncs.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PROPFIND"})
WEB_UI = "Web UI"
EVENT_TYPE_CATEGORY = {"OPDS_ACCESS": "OPDS", "KOBO_SYNC": "Kobo Sync", "API_CALL": "REST API"}
_CACHE_LIMIT = 50_000


def method_label(value) -> str:
    if value is None or value == "":
        return "unknown"
    method = str(value).strip().upper()
    return method if method in HTTP_METHODS else OTHER


def status_label(value) -> str:
    """``"200"`` for HTTP statuses; ``unknown`` for CWA's ``success``/``error`` strings and missing values."""
    if value is None or isinstance(value, bool):
        return "unknown"
    if isinstance(value, float):
        if not value.is_integer():
            return "unknown"
        value = int(value)
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit() or len(value) > 6:
            return "unknown"
        value = int(value)
    if not isinstance(value, int):
        return "unknown"
    return str(value) if 100 <= value <= 599 else OTHER


def duration_seconds(extra: dict) -> float | None:
    """The request duration in seconds, or None when absent or not a sane number."""
    raw = extra.get("duration_ms", extra.get("response_time_ms"))
    if raw is None or isinstance(raw, bool):
        return None
    try:
        ms = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(ms) or ms < 0:
        return None
    return ms / 1000.0


class ApiFolder:
    """Folder (see ``exporter.aggregate``) of ``activity_api_*`` metrics."""

    def __init__(self, config, health):
        self.config = config
        self.health = health
        self.rules = config.api_category_rules
        self.categories = frozenset(r["category"] for r in self.rules) | {WEB_UI}
        self.extra_patterns = tuple(config.endpoint_normalization)
        self.endpoint_cap = LabelCap(config.endpoint_cap)
        self.clock = LocalTime(config.timezone)
        self.requests: Counter = Counter()  # (category, endpoint, method, status)
        self.by_hour: Counter = Counter()  # (weekday, hour)
        self.histograms: dict[str, list] = {}  # category -> [bucket counts (non-cumulative) ..., +Inf, sum]
        self._endpoint_cache: dict[str, str] = {}
        self._labels: dict = {}  # (event type, raw endpoint, category, method, status, its type) -> labels

    def _endpoint(self, raw) -> str:
        if raw is None or raw == "":
            return "unknown"
        raw = str(raw)
        pattern = self._endpoint_cache.get(raw)
        if pattern is None:
            pattern = clean(normalize_endpoint(raw, self.extra_patterns), 200) or "unknown"
            if len(self._endpoint_cache) >= _CACHE_LIMIT:
                self._endpoint_cache.clear()
            self._endpoint_cache[raw] = pattern
        return pattern

    def fold(self, event) -> None:
        self.fold_batch(Batch([event.id], [event.ts], [event.user_id], [event.user_name], [event.event_type],
                              [event.item_id], [event.item_title], [event.extra]))

    def fold_batch(self, batch) -> None:
        """Rows with the same event type and the same parsed ``extra_data`` (the parser shares one dict per
        distinct string) get the same labels: each such group is labelled once and counted ``n`` times."""
        is_api = list(map(API_EVENT_TYPES.__contains__, batch.event_types))
        if True not in is_api:
            return
        types, extras = list(compress(batch.event_types, is_api)), list(compress(batch.extras, is_api))
        by_id = dict(zip(map(id, extras), extras))
        for (event_type, extra_id), n in Counter(zip(types, map(id, extras))).items():
            self._fold_group(event_type, by_id[extra_id], n)
        for quarter, start, end in batch.runs():  # offsets are whole quarters
            n = is_api[start:end].count(True)
            if n:
                weekday, hour = self.clock.weekday_hour(quarter * 900)
                self.by_hour[(str(weekday), str(hour))] += n

    def _fold_group(self, event_type: str, extra: dict, n: int) -> None:
        raw_endpoint = extra.get("endpoint") or extra.get("path")
        category, method, status = extra.get("category"), extra.get("method"), extra.get("status", extra.get("status_code"))
        raw = (event_type, raw_endpoint, category, method, status, type(status))  # parsed JSON: plain values
        labels = self._labels.get(raw)
        if labels is None:
            if len(self._labels) > _CACHE_LIMIT:
                self._labels.clear()
            labels = self._labels[raw] = self._label(event_type, raw_endpoint, category, method, status)
        self.requests[labels] += n
        seconds = duration_seconds(extra)
        if seconds is None:
            if extra.get("duration_ms", extra.get("response_time_ms")) is not None:
                self.health.malformed(TABLE, "bad_duration", n)
            return
        hist = self.histograms.get(labels[0])
        if hist is None:
            hist = self.histograms[labels[0]] = [0] * (len(BUCKETS) + 1) + [0.0]
        hist[bisect_left(BUCKETS, seconds)] += n  # le semantics: a value equal to a bound falls in that bucket
        hist[-1] += seconds * n

    def _label(self, event_type: str, raw_endpoint, category, method, status) -> tuple:
        """(category, endpoint, method, status) labels of a request; fixed once given, so they are cached."""
        pattern = self._endpoint(raw_endpoint)
        if category not in self.categories:
            if raw_endpoint:
                category = categorize(pattern, self.rules)
            else:
                category = EVENT_TYPE_CATEGORY.get(event_type)
                category = category if category in self.categories else WEB_UI
        return category, self.endpoint_cap(pattern), method_label(method), status_label(status)

    def advance(self, now: float) -> None:
        """Nothing expires: every API metric is a counter or histogram."""

    def families(self, now: float) -> list:
        requests = CounterMetricFamily("activity_api_requests_total", "API and feed requests.",
                                       labels=["category", "endpoint", "method", "status"])
        for key, n in sorted(self.requests.items()):
            requests.add_metric(list(key), n)
        by_hour = CounterMetricFamily("activity_api_requests_by_hour_total",
                                      "API requests by weekday (0 = Sunday) and hour of day.",
                                      labels=["weekday", "hour"])
        for (weekday, hour), n in sorted(self.by_hour.items(), key=lambda kv: (int(kv[0][0]), int(kv[0][1]))):
            by_hour.add_metric([weekday, hour], n)
        duration = HistogramMetricFamily("activity_api_request_duration_seconds",
                                         "API request duration (requests that recorded one).", labels=["category"])
        for category in sorted(self.histograms):
            hist = self.histograms[category]
            buckets, running = [], 0
            for bound, n in zip(BUCKETS, hist):
                running += n
                buckets.append((floatToGoString(bound), running))
            running += hist[len(BUCKETS)]
            buckets.append(("+Inf", running))
            duration.add_metric([category], buckets, sum_value=hist[-1])
        return [requests, by_hour, duration]

    def state(self) -> dict:
        return {
            "requests": [[*k, n] for k, n in self.requests.items()],
            "by_hour": [[w, h, n] for (w, h), n in self.by_hour.items()],
            "histograms": {c: list(h) for c, h in self.histograms.items()},
            "endpoints": self.endpoint_cap.state(),
        }

    def load_state(self, state: dict) -> None:
        self.requests = Counter({tuple(r[:4]): r[4] for r in state.get("requests", [])})
        self.by_hour = Counter({(w, h): n for w, h, n in state.get("by_hour", [])})
        self.histograms = {c: list(h) for c, h in state.get("histograms", {}).items()
                           if len(h) == len(BUCKETS) + 2}
        self.endpoint_cap = LabelCap(self.config.endpoint_cap, state.get("endpoints", ()))
        self._labels.clear()  # given under the old admitted set
