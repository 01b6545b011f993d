"""Every user-activity metric equals an independent SQL count over the same generated database."""

from __future__ import annotations

import sqlite3

import pytest

from exporter import config as config_mod
from exporter.refresher import Refresher
from tests.activity_fixture import NOW, make_db
from tests.promtext import by_label, samples

# An independent reading of the rows: SQLite's own date and JSON functions, not the exporter's parser.
VALID = "julianday(timestamp) IS NOT NULL AND trim(coalesce(event_type, '')) != ''"
EPOCH = "((julianday(timestamp) - 2440587.5) * 86400.0)"
ETYPE = "upper(trim(event_type))"
USER = "coalesce(CAST(user_name AS TEXT), 'User' || user_id, 'unknown')"
UKEY = "coalesce(CAST(user_id AS TEXT), 'n:' || user_name)"
EXTRA_OBJ = "(CASE WHEN json_valid(extra_data) AND json_type(extra_data) = 'object' THEN extra_data END)"
FORMAT = (f"upper(coalesce(json_extract({EXTRA_OBJ}, '$.format'), "
          "CASE WHEN extra_data != '' AND NOT json_valid(extra_data) AND extra_data NOT LIKE '{%' THEN extra_data END,"
          " 'UNKNOWN'))")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("act") / "cwa.db")
    make_db(path, n=6000)
    config = config_mod.load(overrides={"activity_db": path, "chunk_size": 700})
    refresher = Refresher(config, clock=lambda: NOW)
    assert refresher.refresh(), refresher.last_error
    conn = sqlite3.connect(path)
    yield config, refresher, samples(refresher.snapshot.text), conn
    conn.close()


def sql(conn, query, *params):
    return conn.execute(query, params).fetchall()


def test_events_by_type_and_user(env):
    _, _, values, conn = env
    expected = {(t, u): n for t, u, n in sql(conn, f"SELECT {ETYPE}, {USER}, count(*) FROM cwa_user_activity WHERE {VALID} GROUP BY 1, 2")}
    assert by_label(values, "activity_events_total", "event_type", "user") == expected
    assert sum(expected.values()) > 5000


def test_malformed_rows_counted_not_crashing(env):
    _, _, values, conn = env
    bad_ts = sql(conn, "SELECT count(*) FROM cwa_user_activity WHERE julianday(timestamp) IS NULL")[0][0]
    malformed = by_label(values, "activity_exporter_malformed_rows_total", "table", "reason")
    assert bad_ts > 0 and malformed[("cwa_user_activity", "bad_timestamp")] == bad_ts
    legacy = sql(conn, f"SELECT count(*) FROM cwa_user_activity WHERE {VALID} AND extra_data != '' AND NOT json_valid(extra_data) AND extra_data NOT LIKE '{{%'")[0][0]
    assert malformed[("cwa_user_activity", "legacy_extra_data")] == legacy
    assert malformed[("cwa_user_activity", "unknown_event_type")] == sql(
        conn, f"SELECT count(*) FROM cwa_user_activity WHERE {VALID} AND {ETYPE} = 'CUSTOM_EVENT'")[0][0]
    total = sql(conn, "SELECT count(*) FROM cwa_user_activity")[0][0]
    assert by_label(values, "activity_exporter_rows_ingested_total", "table")["cwa_user_activity"] == total


def test_format_events(env):
    _, _, values, conn = env
    expected = {k[:3]: k[3] for k in sql(conn, f"""SELECT {ETYPE}, {FORMAT}, {USER}, count(*) FROM cwa_user_activity
        WHERE {VALID} AND {ETYPE} IN ('READ', 'DOWNLOAD', 'EMAIL') GROUP BY 1, 2, 3""")}
    assert by_label(values, "activity_format_events_total", "event_type", "format", "user") == expected


def test_discovery_and_devices(env):
    _, _, values, conn = env
    discovery = dict(sql(conn, f"""SELECT lower(coalesce(json_extract({EXTRA_OBJ}, '$.source'), 'unknown')), count(*)
        FROM cwa_user_activity WHERE {VALID} AND {ETYPE} IN ('READ', 'DOWNLOAD') GROUP BY 1"""))
    assert by_label(values, "activity_discovery_total", "source") == discovery
    devices = dict(sql(conn, f"""SELECT lower(coalesce(json_extract({EXTRA_OBJ}, '$.device_type'), 'unknown')), count(*)
        FROM cwa_user_activity WHERE {VALID} GROUP BY 1"""))
    assert by_label(values, "activity_device_events_total", "device_type") == devices


def test_hour_by_weekday(env):
    _, _, values, conn = env
    expected = {(str(int(w)), str(int(h))): n for w, h, n in sql(
        conn, f"SELECT strftime('%w', timestamp), strftime('%H', timestamp), count(*) FROM cwa_user_activity WHERE {VALID} GROUP BY 1, 2")}
    assert by_label(values, "activity_events_by_hour_total", "weekday", "hour") == expected
    assert len(expected) > 100


@pytest.mark.parametrize("window,days", [("1d", 1), ("7d", 7), ("30d", 30), ("90d", 90), ("365d", 365)])
def test_window_distinct_counts(env, window, days):
    _, _, values, conn = env
    since = NOW - days * 86400
    users = sql(conn, f"SELECT count(DISTINCT {UKEY}) FROM cwa_user_activity WHERE {VALID} AND {UKEY} IS NOT NULL AND {EPOCH} >= ?", since)[0][0]
    books = sql(conn, f"SELECT count(DISTINCT item_id) FROM cwa_user_activity WHERE {VALID} AND {ETYPE} = 'READ' AND item_id IS NOT NULL AND {EPOCH} >= ?", since)[0][0]
    assert by_label(values, "activity_active_users", "window")[window] == users
    assert by_label(values, "activity_books_read", "window")[window] == books


@pytest.mark.parametrize("window,days", [("1d", 1), ("7d", 7), ("30d", 30), ("365d", 365)])
def test_top_books(env, window, days):
    _, _, values, conn = env
    first_day = int(NOW // 86400) - days + 1
    rows = sql(conn, f"""SELECT item_id, count(*) FROM cwa_user_activity WHERE {VALID} AND {ETYPE} IN ('READ', 'DOWNLOAD', 'EMAIL')
        AND item_id IS NOT NULL AND CAST({EPOCH} / 86400 AS INTEGER) >= ? GROUP BY item_id ORDER BY 2 DESC, 1 LIMIT 10""", first_day)
    top = {book: n for (w, book), n in by_label(values, "activity_top_books", "window", "book_id").items() if w == window}
    assert top == {str(book): n for book, n in rows}


def test_search_successes(env):
    config, _, values, conn = env
    expected = sql(conn, f"""SELECT count(*) FROM cwa_user_activity s WHERE {VALID.replace('timestamp', 's.timestamp').replace('event_type', 's.event_type')}
        AND upper(trim(s.event_type)) = 'SEARCH' AND {UKEY.replace('user_', 's.user_')} IS NOT NULL AND EXISTS (
          SELECT 1 FROM cwa_user_activity c WHERE julianday(c.timestamp) IS NOT NULL AND c.id > s.id
          AND upper(trim(c.event_type)) IN ('READ', 'DOWNLOAD', 'EMAIL')
          AND coalesce(CAST(c.user_id AS TEXT), 'n:' || c.user_name) = coalesce(CAST(s.user_id AS TEXT), 'n:' || s.user_name)
          AND (julianday(c.timestamp) - julianday(s.timestamp)) * 86400.0 BETWEEN -0.001 AND ?)""", config.search_success_window)[0][0]
    assert expected > 0
    assert values[("activity_search_successes_total", frozenset())] == expected


def test_sessions(env):
    config, _, values, conn = env
    rows = sql(conn, f"""SELECT {UKEY}, {EPOCH} FROM cwa_user_activity WHERE {VALID} AND {UKEY} IS NOT NULL ORDER BY id""")
    # Independent: per user, events in id order; a gap longer than session_gap starts a new session.
    sessions, current = [], {}
    for key, ts in rows:
        s = current.get(key)
        if s is None or ts - s[1] > config.session_gap:
            if s is not None:
                sessions.append(s)
            current[key] = [ts, ts, 1]
        else:
            s[1] = max(s[1], ts)
            s[2] += 1
    sessions += [s for s in current.values() if NOW - s[1] > config.session_gap]
    multi = [s[1] - s[0] for s in sessions if s[2] > 1]
    assert values[("activity_session_duration_seconds_count", frozenset())] == len(multi)
    assert values[("activity_session_duration_seconds_sum", frozenset())] == pytest.approx(sum(multi), abs=1e-3)


def test_shelf_changes(env):
    _, _, values, conn = env
    expected = {(s, "add" if t == "SHELF_ADD" else "remove"): n for s, t, n in sql(conn, f"""
        SELECT coalesce(json_extract({EXTRA_OBJ}, '$.shelf'), 'unknown'), {ETYPE}, count(*) FROM cwa_user_activity
        WHERE {VALID} AND {ETYPE} IN ('SHELF_ADD', 'SHELF_REMOVE') GROUP BY 1, 2""")}
    assert by_label(values, "activity_shelf_changes_total", "shelf", "action") == expected


def test_recent_searches_bounded_and_switchable(env, tmp_path):
    config, refresher, values, _ = env
    recent = by_label(values, "activity_recent_search_timestamp_seconds", "query", "user")
    assert 0 < len(recent) <= config.recent_searches
    assert all(len(q) <= 100 for q, _ in recent)
    private = Refresher(config.replace(recent_searches_enabled=False), clock=lambda: NOW)
    private.refresh()
    assert not by_label(samples(private.snapshot.text), "activity_recent_search_timestamp_seconds", "query", "user")


def test_user_cap_and_modes(env):
    config, _, _, conn = env
    capped = Refresher(config.replace(user_cap=2), clock=lambda: NOW)
    capped.refresh()
    users = {u for _, u in by_label(samples(capped.snapshot.text), "activity_events_total", "event_type", "user")}
    assert len(users - {"other"}) == 2 and "other" in users
    hashed = Refresher(config.replace(user_label="hash"), clock=lambda: NOW)
    hashed.refresh()
    text = hashed.snapshot.text.decode()
    assert "alice" not in text and "admin" not in text


def test_windows_stay_exact_while_days_pass(tmp_path):
    """Refreshing day after day (windows sliding, finished days packed, late rows for past days) gives the
    same window gauges as reading everything at once."""
    from tests.activity_fixture import make_rows, write_rows

    path = str(tmp_path / "cwa.db")
    rows = make_rows(4000, seed=21, span_days=40)
    rows.sort(key=lambda r: r["timestamp"] or "")
    late = [dict(r) for r in rows[100:140]]  # re-sent later, for days long past
    clock = {"now": NOW - 20 * 86400}
    live = Refresher(config_mod.load(overrides={"activity_db": path}), clock=lambda: clock["now"])
    write_rows(path, [r for r in rows if (r["timestamp"] or "") < "2026-09-02"])
    while clock["now"] < NOW:
        live.refresh()
        clock["now"] += 86400 * 3
        write_rows(path, [r for r in rows
                          if (r["timestamp"] or "") and
                          clock["now"] - 3 * 86400 <= _epoch(r["timestamp"]) < clock["now"]])
        if clock["now"] > NOW - 8 * 86400 and late:
            write_rows(path, late)
            late = []
    clock["now"] = NOW
    live.refresh()
    fresh = Refresher(config_mod.load(overrides={"activity_db": path}), clock=lambda: NOW)
    fresh.refresh()
    for name in ("activity_top_books", "activity_active_users", "activity_books_read",
                 "activity_average_session_duration_seconds"):
        got = {k: v for k, v in samples(live.snapshot.text).items() if k[0] == name}
        want = {k: v for k, v in samples(fresh.snapshot.text).items() if k[0] == name}
        assert got == want and want, name


def _epoch(text):
    from exporter.aggregate.events import parse_timestamp

    return parse_timestamp(text) or 0


def test_search_answered_in_a_later_chunk(tmp_path):
    """A search at the end of one chunk and the read that answers it in the next (with no search of its own)."""
    from exporter.aggregate.activity import ActivityFolder
    from exporter.aggregate.events import Batch

    folder = ActivityFolder(config_mod.load(overrides={"activity_db": str(tmp_path / "x.db")}))

    def row(ts, etype, extra):
        return Batch([1], [ts], [7], ["reader"], [etype], [None if etype == "SEARCH" else 42], [None], [extra])

    folder.fold_batch(row(NOW - 100, "SEARCH", {"query": "dune"}))
    folder.fold_batch(row(NOW - 40, "READ", {"format": "EPUB"}))
    assert folder.search_successes == 1
