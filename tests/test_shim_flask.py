"""The Flask extension in a real Flask app served by a real WSGI server (cheroot), on SQLite and PostgreSQL."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

import pg_server
from blinker import Namespace
from flask import Flask, abort, request
from sqlalchemy import create_engine, text
from cheroot import wsgi

from exporter.shim import ActivityRecorder

UAS = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36", "desktop"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", "mobile"),
    ("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", "tablet"),
    ("Mozilla/5.0 (Linux; U; Android 2.0; en-us;) AppleWebKit/538.1 Mobile Safari/538.1 (Kobo Touch 0373)",
     "ereader"),
    ("KOReader/2024.04 (https://koreader.rocks/) LuaSocket/3.0-rc1", "reader_app"),
    ("curl/8.5.0", "bot"),
]
REFERERS = [(None, "direct"), ("http://lib/search?query=dune", "search"), ("http://lib/series/stored/3", "series"),
            ("http://lib/book/12", "book_detail")]
signals = Namespace()
user_logged_in = signals.signal("test-logged-in")


def header_user():
    """The test app's "current user": taken from headers, as a real app would from its session."""
    uid = request.headers.get("X-User-Id")
    return (int(uid), request.headers.get("X-User-Name")) if uid else None


def make_app(recorder: ActivityRecorder, **options) -> Flask:
    app = Flask(__name__)

    @app.route("/download/<int:book_id>/<book_format>")
    def download_link(book_id, book_format):
        return f"book {book_id}"

    @app.route("/opds/")
    def opds_index():
        return "<feed/>"

    @app.route("/opds/search/<path:query>")
    def feed_cc_search(query):
        return "<feed/>"

    @app.route("/kobo/<auth_token>/v1/library/<book_uuid>/state", methods=["GET", "PUT"])
    def kobo_state(auth_token, book_uuid):
        return {"ok": True}

    @app.route("/api/slow")
    def slow():
        time.sleep(0.03)
        return {"slow": True}

    @app.route("/api/fail")
    def fail():
        raise RuntimeError("boom")

    @app.route("/api/missing/<int:n>")
    def missing(n):
        abort(404)

    @app.route("/")
    def index():
        return "home"

    @app.route("/login", methods=["POST"])
    def login():
        class User:
            id = 42
            name = "alice"
        user_logged_in.send(app, user=User())
        return "welcome"

    event_rules = {
        "download_link": {"event_type": "DOWNLOAD", "item_id": "book_id", "format": "book_format",
                          "item_title": lambda bid: f"Book {bid}"},
        "feed_cc_search": {"event_type": "SEARCH", "query": "query", "require": "query"},
    }
    options.setdefault("event_rules", event_rules)
    options.setdefault("user_loader", header_user)
    options.setdefault("login_signals", [user_logged_in])
    recorder.init_app(app, **options)
    return app


class Served:
    """A cheroot server (the exporter's own WSGI server) in a background thread."""

    def __init__(self, app, threads=16):
        self.server = wsgi.Server(("127.0.0.1", 0), app, numthreads=threads)
        self.server.prepare()
        self.port = self.server.bind_addr[1]
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def close(self):
        self.server.stop()


def run_clients(port, n_threads, per_thread, make_request, stop: threading.Event | None = None):
    """n_threads keep-alive HTTP clients; returns [(thread, i, status)]. ``stop`` ends a timed run early."""

    def client(t):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        out = []
        i = 0
        while (per_thread is None or i < per_thread) and not (stop is not None and stop.is_set()):
            method, path, headers = make_request(t, i)
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            out.append((t, i, resp.status))
            i += 1
        conn.close()
        return out

    with ThreadPoolExecutor(n_threads) as pool:
        results = list(pool.map(client, range(n_threads)))
    return [r for part in results for r in part]


def download_request(t, i):
    seq = t * 100_000 + i
    ua = UAS[seq % len(UAS)][0]
    headers = {"User-Agent": ua, "X-User-Id": str(t + 1), "X-User-Name": f"user{t + 1}"}
    referer = REFERERS[seq % len(REFERERS)][0]
    if referer:
        headers["Referer"] = referer
    fmt = ("epub", "pdf", "kepub")[seq % 3]
    return "GET", f"/download/{seq}/{fmt}", headers


def fetch_rows(url):
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT id, timestamp, user_id, user_name, event_type, item_id, item_title, extra_data "
            "FROM cwa_user_activity ORDER BY id")).all()
    engine.dispose()
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "activity.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def fresh_store(store_url):
    """The store URL with an empty activity table (the PostgreSQL cluster is shared by the session)."""
    if "postgresql" in store_url:
        pg_server.drop_tables(store_url, "cwa_user_activity", "activity_shim_drops")
    return store_url


@pytest.mark.slow
def test_32000_requests_from_16_threads_give_exactly_32000_correct_rows(fresh_store):
    recorder = ActivityRecorder(fresh_store)
    server = Served(make_app(recorder))
    started = datetime.now(timezone.utc).replace(microsecond=0)
    try:
        results = run_clients(server.port, 16, 2000, download_request)
    finally:
        server.close()
    assert len(results) == 32_000 and {status for *_, status in results} == {200}
    assert recorder.flush(60)
    finished = datetime.now(timezone.utc)
    recorder.close()
    assert recorder.dropped == {"queue_full": 0, "database_error": 0, "serialization_error": 0,
                                "invalid_event": 0}

    rows = fetch_rows(recorder.database_url)
    assert len(rows) == 32_000
    item_ids = [row.item_id for row in rows]
    assert len(set(item_ids)) == 32_000, "duplicate events"
    assert set(item_ids) == {t * 100_000 + i for t in range(16) for i in range(2000)}
    for row in rows:
        seq = row.item_id
        t = seq // 100_000
        assert row.event_type == "DOWNLOAD"
        assert (row.user_id, row.user_name) == (t + 1, f"user{t + 1}")
        assert row.item_title == f"Book {seq}"
        ts = datetime.strptime(row.timestamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        assert started <= ts <= finished
        extra = json.loads(row.extra_data)
        assert extra == {"format": ("EPUB", "PDF", "KEPUB")[seq % 3], "source": REFERERS[seq % len(REFERERS)][1],
                         "device_type": UAS[seq % len(UAS)][1]}
        assert row.extra_data == json.dumps(extra, separators=(",", ":"))  # compact JSON text


def test_api_requests_are_recorded_with_url_rule_status_duration_category(fresh_store):
    recorder = ActivityRecorder(fresh_store)
    app = make_app(recorder)
    server = Served(app, threads=4)
    token, uuid = "a3f9c2d1e0b84f5a9c3d2e1f0a9b8c7d", "9b1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"
    requests = [
        ("GET", "/opds/", 200, "OPDS_ACCESS", "/opds/", "OPDS"),
        ("GET", f"/kobo/{token}/v1/library/{uuid}/state", 200, "KOBO_SYNC",
         "/kobo/<auth_token>/v1/library/<book_uuid>/state", "Kobo Sync"),
        ("PUT", f"/kobo/{token}/v1/library/{uuid}/state", 200, "KOBO_SYNC",
         "/kobo/<auth_token>/v1/library/<book_uuid>/state", "Kobo Sync"),
        ("GET", "/api/slow", 200, "API_CALL", "/api/slow", "REST API"),
        ("GET", "/api/fail", 500, "API_CALL", "/api/fail", "REST API"),
        ("GET", "/api/missing/7", 404, "API_CALL", "/api/missing/<int:n>", "REST API"),
        ("GET", "/api/nothing/here/abc123", 404, "API_CALL", "/unmatched", "REST API"),
    ]
    not_recorded = [("GET", "/"), ("GET", "/static/app.css"), ("GET", "/download/1/epub?x=1")]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for method, path, status, *_ in requests:
            conn.request(method, path, headers={"User-Agent": "KOReader/2024.04", "X-User-Id": "3",
                                                "X-User-Name": "carol"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == status, path
        for method, path in not_recorded:
            conn.request(method, path)
            conn.getresponse().read()
        conn.request("POST", "/login")
        conn.getresponse().read()
        conn.close()
    finally:
        server.close()
    assert recorder.flush(20)
    recorder.close()
    rows = fetch_rows(recorder.database_url)
    api_rows = [r for r in rows if r.event_type in ("OPDS_ACCESS", "KOBO_SYNC", "API_CALL")]
    assert len(api_rows) == len(requests)
    for row, (method, path, status, event_type, endpoint, category) in zip(api_rows, requests):
        extra = json.loads(row.extra_data)
        assert (row.event_type, row.user_id, row.user_name) == (event_type, 3, "carol")
        assert extra["endpoint"] == endpoint and token not in extra["endpoint"]
        assert (extra["method"], extra["status"], extra["category"]) == (method, status, category)
        assert extra["device_type"] == "reader_app"
        assert isinstance(extra["duration_ms"], int) and extra["duration_ms"] >= 0  # whole ms: texts repeat
        if path == "/api/slow":
            assert 30 <= extra["duration_ms"] < 5000
    downloads = [r for r in rows if r.event_type == "DOWNLOAD"]
    assert len(downloads) == 1 and json.loads(downloads[0].extra_data) == {
        "format": "EPUB", "source": "direct", "device_type": "unknown"}
    logins = [r for r in rows if r.event_type == "LOGIN"]
    assert [(r.user_id, r.user_name) for r in logins] == [(42, "alice")]
    assert len(rows) == len(requests) + 2


def test_web_ui_tracking_is_opt_in_and_search_rule_needs_a_query(tmp_path):
    recorder = ActivityRecorder(str(tmp_path / "a.db"))
    app = make_app(recorder, record_web_ui=True)
    client = app.test_client()
    assert client.get("/", headers={"User-Agent": UAS[2][0]}).status_code == 200
    assert client.get("/opds/search/dune%20messiah").status_code == 200
    assert client.get("/static/x.css").status_code == 404  # static: never recorded
    assert recorder.flush(10)
    recorder.close()
    rows = fetch_rows(recorder.database_url)
    kinds = [(r.event_type, json.loads(r.extra_data).get("category"), json.loads(r.extra_data).get("query"))
             for r in rows]
    assert kinds == [("API_CALL", "Web UI", None), ("OPDS_ACCESS", "OPDS", None), ("SEARCH", None, "dune messiah")]
    assert json.loads(rows[0].extra_data)["device_type"] == "tablet"


def test_tracking_failure_never_breaks_the_response(tmp_path):
    def broken_loader():
        raise RuntimeError("session store down")

    recorder = ActivityRecorder(str(tmp_path / "a.db"))
    app = make_app(recorder, user_loader=broken_loader)
    client = app.test_client()
    resp = client.get("/download/5/epub")
    assert resp.status_code == 200 and resp.data == b"book 5"
    assert recorder.flush(10)
    recorder.close()
    rows = fetch_rows(recorder.database_url)
    assert [(r.event_type, r.user_id, r.item_id) for r in rows] == [("DOWNLOAD", None, 5)]


def test_unknown_option_is_rejected_at_setup(tmp_path):
    recorder = ActivityRecorder(str(tmp_path / "a.db"))
    with pytest.raises(TypeError, match="api_rule"):
        recorder.init_app(Flask(__name__), api_rule=[])
    recorder.close()


def test_seed_sql_reads_rows_written_through_flask(tmp_path):
    """The format pie and device pie queries of seed 000, verbatim apart from the FROM clause."""
    recorder = ActivityRecorder(str(tmp_path / "a.db"))
    client = make_app(recorder).test_client()
    for i, (ua, _) in enumerate(UAS):
        client.get(f"/download/{i}/{'epub' if i % 2 else 'mobi'}", headers={"User-Agent": ua})
    assert recorder.flush(10)
    recorder.close()
    db = sqlite3.connect(tmp_path / "a.db")
    formats = dict(db.execute(
        "SELECT UPPER(COALESCE(CASE WHEN json_valid(extra_data) THEN json_extract(extra_data, '$.format') "
        "ELSE extra_data END, 'UNKNOWN')) as format, COUNT(*) FROM cwa_user_activity "
        "WHERE event_type IN ('DOWNLOAD', 'EMAIL') GROUP BY format").fetchall())
    assert formats == {"EPUB": 3, "MOBI": 3}
    devices = dict(db.execute("SELECT json_extract(extra_data, '$.device_type'), COUNT(*) FROM cwa_user_activity "
                              "GROUP BY 1").fetchall())
    assert devices == {expected: 1 for _, expected in UAS}
