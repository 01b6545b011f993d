"""API metrics equal independent counts over stored events; CWA's sparse rows; a flood cannot grow the series."""

from __future__ import annotations

import json
import random
import sqlite3
import uuid
from datetime import datetime, timezone

import pytest

from exporter import schema
from exporter.aggregate.api import BUCKETS, ApiFolder
from exporter.aggregate.events import EVENT_COLUMNS, BatchParser, Event, parse_row
from exporter.aggregate.health import Health
from exporter.config import load
from exporter.db import writer_engine

T0 = datetime(2024, 3, 3, 0, 0, tzinfo=timezone.utc).timestamp()  # a Sunday

# raw endpoint as stored -> the pattern it must become (written by hand, not by the code under test)
ENDPOINTS = {
    "/opds/download/12/epub/": "/opds/download/*/epub/",
    "/opds/download/977/mobi/": "/opds/download/*/mobi/",
    "/opds": "/opds",
    "/opds/<int:book_id>/cover": "/opds/<int:book_id>/cover",
    "/kobo/3f9c2a1e-8b7d-4c6e-9f0a-1b2c3d4e5f60/v1/library/sync": "/kobo/*/v1/library/sync",
    "/kobo/0a1b2c3d-1111-2222-3333-444455556666/v1/library/sync": "/kobo/*/v1/library/sync",
    "/api/books": "/api/books",
    "/api/books/55": "/api/books/*",
    "/book/3": "/book/*",
    "/": "/",
}
CATEGORY = {"/opds": "OPDS", "/kobo": "Kobo Sync", "/api/": "REST API"}


def category_of(pattern: str) -> str:
    return next((c for p, c in CATEGORY.items() if pattern.startswith(p)), "Web UI")


def make_rows(n: int, seed: int = 7) -> list[tuple]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        extra: dict = {}
        kind = rnd.random()
        if kind < 0.8:
            extra["endpoint"] = rnd.choice(list(ENDPOINTS))
        if kind < 0.6:
            extra["method"] = rnd.choice(["GET", "get", "POST", "BREW", "HEAD"])
            extra["status"] = rnd.choice([200, 200, 304, 404, 500, "success", "error"])
        if kind < 0.5:
            extra["duration_ms"] = rnd.choice([1, 5, 10, 42.5, 250, 999, 1000, 31000])
        event_type = rnd.choice(["OPDS_ACCESS", "KOBO_SYNC", "API_CALL", "DOWNLOAD"])
        ts = datetime.fromtimestamp(T0 + rnd.randint(0, 14 * 86400), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((ts, 1, "alice", event_type, None, None, json.dumps(extra) if extra else None))
    return rows


@pytest.fixture
def activity_db(tmp_path):
    path = str(tmp_path / "cwa.db")
    schema.create_all(writer_engine(path))
    conn = sqlite3.connect(path)
    conn.executemany("INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type, item_id, item_title, "
                     "extra_data) VALUES (?, ?, ?, ?, ?, ?, ?)", make_rows(3000))
    conn.commit()
    conn.close()
    return path


def fold_all(path, folder: ApiFolder) -> None:
    conn = sqlite3.connect(path)
    for row in conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM cwa_user_activity ORDER BY id"):
        event = parse_row(row, folder.health)
        if event is not None:
            folder.fold(event)
    conn.close()


def samples(families, name: str, *labels) -> dict:
    return {tuple(s.labels[l] for l in labels): s.value for f in families for s in f.samples if s.name == name}


API_ROWS = "FROM cwa_user_activity WHERE event_type IN ('OPDS_ACCESS', 'KOBO_SYNC', 'API_CALL')"


def test_requests_equal_independent_counts(activity_db):
    folder = ApiFolder(load(environ={}), Health())
    fold_all(activity_db, folder)
    got = samples(folder.families(0), "activity_api_requests_total", "category", "endpoint", "method", "status")
    conn = sqlite3.connect(activity_db)
    expected: dict = {}
    for ep, method, status, status_type, event_type, n in conn.execute(
        "SELECT json_extract(extra_data, '$.endpoint') AS ep, "
        "COALESCE(UPPER(json_extract(extra_data, '$.method')), 'unknown') AS m, "
        "json_extract(extra_data, '$.status') AS s, json_extract(extra_data, '$.status') IS NOT NULL "
        "AND typeof(json_extract(extra_data, '$.status')) = 'integer', event_type, COUNT(*) "
        f"{API_ROWS} GROUP BY 1, 2, 3, 4, 5"
    ):
        if ep is None:
            pattern = "unknown"
            category = {"OPDS_ACCESS": "OPDS", "KOBO_SYNC": "Kobo Sync", "API_CALL": "REST API"}[event_type]
        else:
            pattern = ENDPOINTS[ep]
            category = category_of(pattern)
        method = method if method in ("GET", "POST", "HEAD", "unknown") else "other"
        status = str(status) if status_type else "unknown"
        key = (category, pattern, method, status)
        expected[key] = expected.get(key, 0) + n
    assert got == expected
    assert sum(got.values()) == conn.execute(f"SELECT COUNT(*) {API_ROWS}").fetchone()[0]
    # The seed's category pie, as its own SQL (rows with an endpoint).
    pie = dict(conn.execute(
        "SELECT CASE WHEN json_extract(extra_data, '$.endpoint') LIKE '/opds%' THEN 'OPDS' "
        "WHEN json_extract(extra_data, '$.endpoint') LIKE '/kobo%' THEN 'Kobo Sync' "
        "WHEN json_extract(extra_data, '$.endpoint') LIKE '/api/%' THEN 'REST API' ELSE 'Web UI' END, COUNT(*) "
        f"{API_ROWS} AND json_extract(extra_data, '$.endpoint') IS NOT NULL GROUP BY 1"))
    with_endpoint: dict = {}
    for (cat, ep, _, _), n in got.items():
        if ep != "unknown":
            with_endpoint[cat] = with_endpoint.get(cat, 0) + n
    assert with_endpoint == pie
    conn.close()


def test_hour_weekday_equal_sql_in_utc(activity_db):
    folder = ApiFolder(load(overrides={"timezone": "UTC"}, environ={}), Health())
    fold_all(activity_db, folder)
    got = samples(folder.families(0), "activity_api_requests_by_hour_total", "weekday", "hour")
    conn = sqlite3.connect(activity_db)
    expected = {(w, str(int(h))): n for w, h, n in conn.execute(
        f"SELECT strftime('%w', timestamp), strftime('%H', timestamp), COUNT(*) {API_ROWS} GROUP BY 1, 2")}
    conn.close()
    assert got == expected


def test_hour_weekday_in_a_configured_zone():
    folder = ApiFolder(load(overrides={"timezone": "Asia/Kolkata"}, environ={}), Health())
    # Saturday 2024-03-02 20:00 UTC is Sunday 01:30 in India (UTC+5:30).
    folder.fold(Event(1, datetime(2024, 3, 2, 20, 0, tzinfo=timezone.utc).timestamp(), None, None, "API_CALL",
                      None, None, {"endpoint": "/api/x"}))
    assert samples(folder.families(0), "activity_api_requests_by_hour_total", "weekday", "hour") == {("0", "1"): 1}


def test_duration_histogram_equal_sql(activity_db):
    folder = ApiFolder(load(environ={}), Health())
    fold_all(activity_db, folder)
    fams = folder.families(0)
    conn = sqlite3.connect(activity_db)
    observed = (f"{API_ROWS} AND json_extract(extra_data, '$.duration_ms') IS NOT NULL "
                "AND json_extract(extra_data, '$.endpoint') IS NOT NULL")
    cat_sql = ("CASE WHEN json_extract(extra_data, '$.endpoint') LIKE '/opds%' THEN 'OPDS' "
               "WHEN json_extract(extra_data, '$.endpoint') LIKE '/kobo%' THEN 'Kobo Sync' "
               "WHEN json_extract(extra_data, '$.endpoint') LIKE '/api/%' THEN 'REST API' ELSE 'Web UI' END")
    buckets = samples(fams, "activity_api_request_duration_seconds_bucket", "category", "le")
    counts = samples(fams, "activity_api_request_duration_seconds_count", "category")
    sums = samples(fams, "activity_api_request_duration_seconds_sum", "category")
    for cat, n, total in conn.execute(
        f"SELECT {cat_sql}, COUNT(*), SUM(json_extract(extra_data, '$.duration_ms')) / 1000.0 {observed} GROUP BY 1"
    ):
        assert counts[(cat,)] == n
        assert sums[(cat,)] == pytest.approx(total)
        assert buckets[(cat, "+Inf")] == n
        for bound in BUCKETS:
            below = conn.execute(f"SELECT COUNT(*) {observed} AND {cat_sql} = ? AND "
                                 "json_extract(extra_data, '$.duration_ms') <= ?", (cat, bound * 1000)).fetchone()[0]
            le = str(float(bound))
            assert buckets[(cat, le)] == below, (cat, le)
    # Rows without a duration (CWA's own) are requests but not observations.
    total_observed = sum(counts.values())
    with_duration = conn.execute(f"SELECT COUNT(*) {API_ROWS} AND json_extract(extra_data, '$.duration_ms') "
                                 "IS NOT NULL").fetchone()[0]
    assert total_observed == with_duration
    assert sum(samples(fams, "activity_api_requests_total", "category", "endpoint", "method", "status").values()) \
        > total_observed
    conn.close()


def test_chunks_count_the_same_as_rows_one_by_one(activity_db):
    """Chunks (labels per distinct extra_data, durations a column at a time) give the same requests and
    histogram as rows folded one by one."""
    one_by_one, chunked, health = ApiFolder(load(environ={}), Health()), ApiFolder(load(environ={}), Health()), Health()
    fold_all(activity_db, one_by_one)
    parser, conn = BatchParser(health), sqlite3.connect(activity_db)
    conn.text_factory = bytes  # as the refresher reads SQLite
    rows = conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM cwa_user_activity ORDER BY id").fetchall()
    for start in range(0, len(rows), 300):
        chunked.fold_batch(parser.parse(rows[start:start + 300]))
    conn.close()

    def every_sample(folder):
        return {(s.name, frozenset(s.labels.items())): s.value for f in folder.families(0) for s in f.samples}

    expected = every_sample(one_by_one)
    assert every_sample(chunked) == {key: pytest.approx(value) for key, value in expected.items()}
    assert sum(v for (name, _), v in expected.items() if name == "activity_api_request_duration_seconds_count") > 100


def test_cwa_rows_without_status_or_duration():
    """What CWA itself stores: endpoint and method at most, status 'success' or nothing, no duration."""
    folder = ApiFolder(load(environ={}), Health())
    folder.fold(Event(1, T0, 1, "bob", "OPDS_ACCESS", None, None, {"endpoint": "/opds/search", "status": "success"}))
    folder.fold(Event(2, T0, 1, "bob", "KOBO_SYNC", None, None, {}))
    folder.fold(Event(3, T0, 1, "bob", "API_CALL", None, None, {"endpoint": "/ajax/book/1", "method": "POST",
                                                                 "status": "error"}))
    folder.fold(Event(4, T0, 1, "bob", "DOWNLOAD", 5, "t", {"format": "EPUB"}))  # not an API event
    fams = folder.families(0)
    assert samples(fams, "activity_api_requests_total", "category", "endpoint", "method", "status") == {
        ("OPDS", "/opds/search", "unknown", "unknown"): 1,
        ("Kobo Sync", "unknown", "unknown", "unknown"): 1,
        ("Web UI", "/ajax/book/*", "POST", "unknown"): 1,
    }
    assert samples(fams, "activity_api_request_duration_seconds_count", "category") == {}


def test_category_from_extra_only_when_known_and_custom_rules():
    config = load(overrides={"api_category_rules": [{"regex": r"^/feeds?/", "category": "Feeds"},
                                                    {"prefix": "/opds", "category": "OPDS"}]}, environ={})
    folder = ApiFolder(config, Health())
    folder.fold(Event(1, T0, None, None, "API_CALL", None, None, {"endpoint": "/feed/new"}))
    folder.fold(Event(2, T0, None, None, "API_CALL", None, None, {"endpoint": "/x", "category": "Feeds"}))
    folder.fold(Event(3, T0, None, None, "API_CALL", None, None, {"endpoint": "/opds", "category": "<evil>"}))
    folder.fold(Event(4, T0, None, None, "KOBO_SYNC", None, None, {}))  # 'Kobo Sync' is not configured here
    got = samples(folder.families(0), "activity_api_requests_total", "category", "endpoint")
    assert got == {("Feeds", "/feed/new"): 1, ("Feeds", "/x"): 1, ("OPDS", "/opds"): 1, ("Web UI", "unknown"): 1}


def test_state_round_trip():
    folder = ApiFolder(load(environ={}), Health())
    for i in range(50):
        folder.fold(Event(i, T0 + i * 3600, None, None, "API_CALL", None, None,
                          {"endpoint": f"/api/v{i % 3}/x", "status": 200, "duration_ms": i}))
    again = ApiFolder(load(environ={}), Health())
    again.load_state(json.loads(json.dumps(folder.state())))
    assert [s for f in again.families(0) for s in f.samples] == [s for f in folder.families(0) for s in f.samples]


def label_sets(families) -> dict:
    """Distinct label sets per sample name: what Prometheus would store as series."""
    out: dict = {}
    for f in families:
        for s in f.samples:
            out.setdefault(s.name, set()).add(tuple(sorted(s.labels.items())))
    return out


def test_flood_of_unique_paths_uuids_and_users_is_bounded():
    config = load(environ={})
    folder = ApiFolder(config, Health())
    rnd = random.Random(3)
    # A legitimate endpoint before the flood keeps its own series afterwards.
    folder.fold(Event(0, T0, 1, "admin", "OPDS_ACCESS", None, None, {"endpoint": "/opds/new", "method": "GET",
                                                                       "status": 200, "duration_ms": 3}))
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i in range(1, 100_001):
        word = "".join(rnd.choice(letters) for _ in range(8))
        path = rnd.choice([
            f"/opds/search/{word}",
            f"/kobo/{uuid.uuid4()}/v1/library/{uuid.uuid4()}/state",
            f"/api/{word}/{uuid.uuid4().hex}",
            f"/{word}/{word[::-1]}",
        ])
        extra = {"endpoint": path, "method": rnd.choice(["GET", word]), "status": rnd.choice([200, word, 99999]),
                 "duration_ms": rnd.random() * 100, "category": word}
        folder.fold(Event(i, T0 + i * 37, i, f"user-{uuid.uuid4()}", rnd.choice(["OPDS_ACCESS", "KOBO_SYNC",
                                                                                   "API_CALL"]), None, None, extra))
    series = label_sets(folder.families(T0))
    requests = series["activity_api_requests_total"]
    endpoints = {dict(s)["endpoint"] for s in requests}
    categories = {dict(s)["category"] for s in requests}
    methods = {dict(s)["method"] for s in requests}
    statuses = {dict(s)["status"] for s in requests}
    assert len(endpoints) == config.endpoint_cap + 1 and "other" in endpoints and "/opds/new" in endpoints
    assert "/kobo/*/v1/library/*/state" in endpoints  # UUIDs are normalised, not capped away
    assert categories == {"OPDS", "Kobo Sync", "REST API", "Web UI"}
    assert methods == {"GET", "other"} and statuses == {"200", "unknown", "other"}
    # The configured bound: (endpoint patterns + one 'other' per category) x methods x statuses seen.
    bound = (config.endpoint_cap + len(categories)) * len(methods) * len(statuses)
    assert len(requests) <= bound
    assert len(series["activity_api_requests_by_hour_total"]) <= 7 * 24
    assert len(series["activity_api_request_duration_seconds_bucket"]) <= len(categories) * (len(BUCKETS) + 1)
    total = sum(len(v) for v in series.values())
    assert total <= bound + 7 * 24 + len(categories) * (len(BUCKETS) + 3)
    assert sum(s.value for f in folder.families(T0) for s in f.samples
               if s.name == "activity_api_requests_total") == 100_001
