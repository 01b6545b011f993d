"""Report, export and status endpoints through a real Flask app: shapes, values against SQL, fuzzed input."""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import random
import sqlite3
from datetime import date

import bcrypt
import flask
import pytest

import calibre_fixture
from exporter import config as config_mod
from exporter.db import reader_engine
from exporter.reports_api import make_blueprint
from exporter.webauth import Authenticator
from test_daily import PERIODS, fold_db, populate

PASSWORD = "pw"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
AUTH = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}


class Ctx:
    """What the exporter's web app hands to ``make_blueprint``."""

    def __init__(self, config, daily, library=None):
        self.config = config
        self.daily = daily
        self._engine = reader_engine(config.activity_db)
        self._library = reader_engine(library) if library else None
        self.auth = Authenticator({"admin": HASH})

    def engine(self):
        return self._engine

    def library_engine(self):
        return self._library

    def status(self):
        return {"cursor": 42, "last_refresh": 1700000000.0, "malformed_rows": {}, "drops": {}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    db = str(d / "activity.db")
    populate(db, PERIODS)
    conn = sqlite3.connect(db)
    conn.executemany("INSERT INTO cwa_import (timestamp, filename, original_backed_up, source, method) "
                     "VALUES (?, ?, 'no', ?, ?)",
                     [("2024-03-29 10:00:00", "a.epub", "web", "calibredb"),
                      ("2024-03-30 10:00:00", "b.pdf", "ingest", "calibredb")])
    conn.execute("INSERT INTO cwa_enforcement (timestamp, book_id, book_title, author, file_path, trigger_type) "
                 "VALUES ('2024-03-29 11:00:00', 3, '=HYPERLINK(\"x\")', 'A', '/x', 'EPUB_EDIT')")
    conn.commit()
    conn.close()
    lib = str(d / "metadata.db")
    calibre_fixture.build(lib, [
        calibre_fixture.Book("One", series="S", series_index=1, rating=8, formats={"EPUB": 10, "PDF": 20},
                             timestamp="2024-03-28 12:00:00.000000+00:00"),
        calibre_fixture.Book("Two", series="S", series_index=3, rating=6, timestamp="2024-03-30 12:00:00+00:00"),
        calibre_fixture.Book("Three", timestamp="2023-01-01 12:00:00+00:00"),
    ])
    config = config_mod.load(overrides=dict(activity_db=db, calibre_library=lib, timezone="Europe/Berlin",
                                            report_start_time="06:00", report_include_errors=True), environ={})
    daily = fold_db(db, config)
    app = flask.Flask(__name__)
    app.register_blueprint(make_blueprint(Ctx(config, daily, lib)))
    return app.test_client(), db, daily, config


def sections(body: str) -> dict:
    out, title = {}, None
    for block in body.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("=== ") and lines[0].endswith(" ===")
        title = lines[0][4:-4]
        out[title] = list(csv.reader(io.StringIO("\n".join(lines[1:]))))
    return out


def test_daily_report_json_csv_and_paging(setup):
    client, _, daily, _ = setup
    resp = client.get("/api/reports/daily/2024-03-30", headers=AUTH)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "success" and body["message"] is None
    data = body["data"]
    assert data == json.loads(json.dumps(daily.report(date(2024, 3, 30))))
    for key in ("date", "user_count", "content_views", "active_users", "peak_usage_time",
                "average_session_duration", "top_10_content", "failed_logins", "api_5xx"):
        assert key in data
    assert len(data["top_10_content"]) == 10
    page = client.get("/api/reports/daily/2024-03-30?limit=2&offset=3", headers=AUTH).get_json()["data"]
    assert page["top_10_content"] == data["top_10_content"][3:5]

    resp = client.get("/api/reports/daily/2024-03-30?format=csv", headers=AUTH)
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert resp.headers["Content-Disposition"].startswith("attachment; filename=cwa_stats_daily_20240330_")
    s = sections(resp.get_data(as_text=True))
    metrics = dict(s["DAILY USAGE REPORT"][1:])
    assert int(metrics["user_count"]) == data["user_count"]
    assert len(s["TOP CONTENT"]) == 11

    assert client.get("/api/reports/daily/2024-06-01", headers=AUTH).status_code == 404


def test_daily_range(setup):
    client, _, daily, _ = setup
    body = client.get("/api/reports/daily?start=2024-03-27&end=2024-04-05", headers=AUTH).get_json()
    assert [r["date"] for r in body["data"]] == [d.isoformat() for d in daily.days()
                                                 if date(2024, 3, 27) <= d <= date(2024, 4, 5)]
    one = client.get("/api/reports/daily?date=2024-03-29", headers=AUTH).get_json()["data"]
    assert len(one) == 1 and one[0]["date"] == "2024-03-29"
    resp = client.get("/api/reports/daily?start=2024-03-27&end=2024-04-05&format=csv", headers=AUTH)
    rows = list(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert rows[0] == ["=== DAILY USAGE REPORTS ==="] and len(rows) == 2 + len(body["data"])
    resp = client.get("/api/reports/daily?start=2023-01-01&end=2024-12-31", headers=AUTH)
    assert resp.status_code == 400 and "366" in resp.get_json()["message"]


def test_activity_export_matches_sql(setup):
    client, db, _, _ = setup
    resp = client.get("/api/export/activity.csv?start=2024-03-29&end=2024-03-30", headers=AUTH)
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"].startswith("attachment; filename=cwa_stats_activity_")
    s = sections(resp.get_data(as_text=True))
    assert list(s) == ["USER ACTIVITY STATISTICS", "EVENT TYPES", "TOP USERS", "DAILY ACTIVITY",
                       "FORMAT DISTRIBUTION", "TOP BOOKS", "DISCOVERY SOURCES", "DEVICE TYPES", "RECENT SEARCHES"]
    stats = dict(s["USER ACTIVITY STATISTICS"][1:])
    conn = sqlite3.connect(db)
    # local (Berlin) days 03-29 and 03-30 → UTC 03-28 23:00 .. 03-30 22:00 (DST starts on 03-31)
    lo, hi = "2024-03-28 23:00:00", "2024-03-30 23:00:00"
    assert int(stats["total_events"]) == conn.execute(
        "SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp >= ? AND timestamp < ?", (lo, hi)).fetchone()[0]
    assert int(stats["active_users"]) == conn.execute(
        "SELECT COUNT(DISTINCT user_id) FROM cwa_user_activity WHERE timestamp >= ? AND timestamp < ?",
        (lo, hi)).fetchone()[0]
    assert int(stats["downloads"]) == conn.execute(
        "SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp >= ? AND timestamp < ? "
        "AND event_type IN ('DOWNLOAD','EMAIL')", (lo, hi)).fetchone()[0]
    assert s["TOP USERS"][0] == ["User ID", "Username", "Event Count"]
    # the per-user view: total logins instead of active users, most active days instead of top users
    resp = client.get("/api/export/activity.csv?start=2024-03-29&end=2024-03-30&user=3", headers=AUTH)
    s = sections(resp.get_data(as_text=True))
    stats = dict(s["USER ACTIVITY STATISTICS"][1:])
    assert int(stats["total_logins"]) == conn.execute(
        "SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp >= ? AND timestamp < ? AND user_id = 3 "
        "AND event_type = 'LOGIN'", (lo, hi)).fetchone()[0]
    assert "MOST ACTIVE DAYS" in s and "TOP USERS" not in s
    by_name = sections(client.get("/api/export/activity.csv?start=2024-03-29&end=2024-03-30&user=ghost",
                                  headers=AUTH).get_data(as_text=True))
    assert int(dict(by_name["USER ACTIVITY STATISTICS"][1:])["total_events"]) == conn.execute(
        "SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp >= ? AND timestamp < ? AND user_name = 'ghost'",
        (lo, hi)).fetchone()[0]


def test_library_and_api_exports(setup):
    client, db, _, _ = setup
    s = sections(client.get("/api/export/library.csv?start=2024-03-01&end=2024-03-31", headers=AUTH)
                 .get_data(as_text=True))
    summary = dict(s["LIBRARY SUMMARY"][1:])
    assert summary["total_books"] == "3" and summary["books_added"] == "2" and summary["unrated_books"] == "1"
    assert s["LIBRARY GROWTH"][1:] == [["2024-03-28", "1", "2"], ["2024-03-30", "1", "3"]]
    assert ["EPUB", "3", "2010"] == s["FORMAT DISTRIBUTION"][1]
    assert s["SERIES COMPLETION"][1:] == [["S", "2", "3.0"]]
    assert s["RATING DISTRIBUTION"][1:] == [["3.0", "1"], ["4.0", "1"]]
    # a title that is a spreadsheet formula is defused
    assert s["TOP ENFORCED BOOKS"][1][1].startswith("'=")
    assert sorted(map(tuple, s["IMPORT PIPELINE"][1:])) == [("ingest", "calibredb", "PDF", "1"),
                                                           ("web", "calibredb", "EPUB", "1")]

    s = sections(client.get("/api/export/api.csv?start=2024-03-01&end=2024-11-30", headers=AUTH)
                 .get_data(as_text=True))
    total = sqlite3.connect(db).execute(
        "SELECT COUNT(*) FROM cwa_user_activity WHERE event_type IN ('API_CALL','OPDS_ACCESS','KOBO_SYNC')"
    ).fetchone()[0]
    assert int(dict(s["API USAGE SUMMARY"][1:])["total_requests"]) == total
    assert sum(int(r[1]) for r in s["USAGE BY CATEGORY"][1:]) == total
    assert dict((r[0], r[1]) for r in s["USAGE BY CATEGORY"][1:]) == {"OPDS": str(total)}  # all /opds/x
    assert sum(int(r[1]) for r in s["STATUS CODES"][1:]) == total


def test_status(setup):
    client, db, daily, _ = setup
    data = client.get("/api/status", headers=AUTH).get_json()["data"]
    assert data["cursor"] == 42
    assert data["tables"]["cwa_user_activity"] == sqlite3.connect(db).execute(
        "SELECT COUNT(*) FROM cwa_user_activity").fetchone()[0]
    assert data["tables"]["cwa_import"] == 2
    assert data["daily_reports"]["days"] == len(daily.days())


def test_every_route_requires_credentials(setup):
    client = setup[0]
    for path in ("/api/reports/daily/2024-03-30", "/api/reports/daily", "/api/export/activity.csv",
                 "/api/export/library.csv", "/api/export/api.csv", "/api/status"):
        resp = client.get(path)
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")


def test_disabled_reports_answer_404(setup):
    _, db, _, config = setup
    app = flask.Flask(__name__)
    app.register_blueprint(make_blueprint(Ctx(config, None)))
    resp = app.test_client().get("/api/reports/daily/2024-03-30", headers=AUTH)
    assert resp.status_code == 404 and "disabled" in resp.get_json()["message"]


def test_unreachable_database_is_503_not_500(setup, tmp_path):
    _, _, daily, config = setup
    missing = config.replace(activity_db=str(tmp_path / "missing.db"))
    app = flask.Flask(__name__)
    app.register_blueprint(make_blueprint(Ctx(missing, daily)))
    client = app.test_client()
    assert client.get("/api/export/api.csv", headers=AUTH).status_code in (200, 503)
    status = client.get("/api/status", headers=AUTH)
    assert status.status_code == 200 and status.get_json()["data"]["tables"]["cwa_user_activity"] is None


NASTY = ["", " ", "2024-02-30", "2024-13-01", "0000-01-01", "9999-12-31", "2024-1-1", "20240101", "-1", "0",
         "99999999999999999999", "1e9", "abc", "' OR 1=1 --", "%00", "\x00", "日本", "2024-03-30T00:00:00",
         "../../etc/passwd", "[]", "{}", "null", "1" * 5000, "2024-03-30\n", "+5", "0x10", "NaN"]
PARAMS = ["start", "end", "date", "limit", "offset", "format", "user", "days"]
PATHS = ["/api/reports/daily/{v}", "/api/reports/daily", "/api/export/activity.csv", "/api/export/library.csv",
         "/api/export/api.csv", "/api/status", "/api/export/{v}.csv"]


def test_fuzzed_parameters_never_500(setup):
    client = setup[0]
    rng = random.Random(3)
    seen = set()
    count = 0
    for path, value in itertools.product(PATHS, NASTY):
        url = path.replace("{v}", value.replace("/", "%2F").replace("?", "%3F").replace("#", "%23")
                           .replace("\n", "%0A").replace("\x00", "%00").replace(" ", "%20"))
        for _ in range(6):
            query = {p: rng.choice(NASTY + ["2024-03-30", "5", "csv", "json"]) for p in
                     rng.sample(PARAMS, rng.randint(0, 4))}
            resp = client.get(url, query_string=query, headers=AUTH)
            count += 1
            assert resp.status_code < 500, (url, query, resp.get_data()[:300])
            seen.add(resp.status_code)
            if resp.status_code == 400:
                body = resp.get_json()
                assert body["status"] == "error" and body["message"]
    assert count > 1000 and {200, 400, 404} <= seen


def test_exports_and_status_on_postgresql(setup, pg_url):
    """The same export SQL on PostgreSQL gives the same CSV as on SQLite."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from exporter.db import writer_engine
    from exporter.schema import create_all

    client, db, daily, config = setup
    name = "api_" + uuid.uuid4().hex[:10]
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = writer_engine(url)
        create_all(engine)
        src = sqlite3.connect(db)
        with engine.begin() as conn:
            for table in ("cwa_user_activity", "cwa_import", "cwa_enforcement"):
                cur = src.execute(f"SELECT * FROM {table}")
                cols = [c[0] for c in cur.description]
                conn.execute(text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                                  f"({', '.join(':' + c for c in cols)})"), [dict(zip(cols, r)) for r in cur])
        engine.dispose()
        pg_app = flask.Flask(__name__)
        pg_app.register_blueprint(make_blueprint(Ctx(config.replace(activity_db=url), daily,
                                                     config.calibre_library)))
        pg = pg_app.test_client()
        for path in ("/api/export/activity.csv?start=2024-03-29&end=2024-03-30",
                     "/api/export/activity.csv?start=2024-03-29&end=2024-03-30&user=3",
                     "/api/export/library.csv?start=2024-03-01&end=2024-03-31",
                     "/api/export/api.csv?start=2024-03-01&end=2024-11-30"):
            want = sections(client.get(path, headers=AUTH).get_data(as_text=True))
            got = sections(pg.get(path, headers=AUTH).get_data(as_text=True))
            assert "error" not in {r[0] for rows in got.values() for r in rows if r}, path
            # SQLite and PostgreSQL may order equal counts differently inside a top-N; compare as sets there
            for title in want:
                if title in ("TOP USERS", "TOP BOOKS", "RECENT SEARCHES"):
                    assert len(got[title]) == len(want[title]), (path, title)
                else:
                    assert sorted(got[title]) == sorted(want[title]), (path, title)
        status = pg.get("/api/status", headers=AUTH).get_json()["data"]
        assert status["tables"]["cwa_user_activity"] == src.execute(
            "SELECT COUNT(*) FROM cwa_user_activity").fetchone()[0]
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
