"""ActivityRecorder on its own: the CWA call read by seed 000's SQL, field handling, drops, fork, exit."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

import pg_server
from sqlalchemy import create_engine, text

from exporter.shim import ActivityRecorder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "cwa.db")
    pg = request.getfixturevalue("pg_url")
    pg_server.drop_tables(pg, "cwa_user_activity", "activity_shim_drops")
    return pg


def query(url, sql, **params):
    engine = create_engine(_url(url))
    with engine.connect() as conn:
        rows = conn.execute(text(sql), params).all()
    engine.dispose()
    return rows


def _url(url):
    from exporter.db import to_url

    return to_url(url)


def is_pg(url):
    return "postgresql" in url


def test_cwa_call_is_read_right_by_seed_000_sql(url):
    recorder = ActivityRecorder(url)
    recorder.log_activity(user_id=1, user_name='admin', event_type='DOWNLOAD', item_id=5, item_title='Dune',
                          extra_data=json.dumps({'format': 'EPUB'}))
    assert recorder.flush(10)
    recorder.close()
    if is_pg(url):
        fmt_sql = ("SELECT UPPER(COALESCE(extra_data::json->>'format', 'UNKNOWN')) AS format, COUNT(*) "
                   "FROM cwa_user_activity WHERE event_type IN ('DOWNLOAD', 'EMAIL') GROUP BY 1")
        day_sql = ("SELECT substr(timestamp, 1, 10) AS day, event_type, COUNT(*) FROM cwa_user_activity "
                   "GROUP BY day, event_type")
        device_sql = "SELECT extra_data::json->>'device_type' FROM cwa_user_activity"
    else:
        fmt_sql = ("SELECT UPPER(COALESCE(CASE WHEN json_valid(extra_data) THEN json_extract(extra_data, '$.format') "
                   "ELSE extra_data END, 'UNKNOWN')) as format, COUNT(*) FROM cwa_user_activity "
                   "WHERE event_type IN ('DOWNLOAD', 'EMAIL') GROUP BY format")
        day_sql = ("SELECT date(timestamp) as day, event_type, COUNT(*) FROM cwa_user_activity "
                   "GROUP BY day, event_type")
        device_sql = "SELECT json_extract(extra_data, '$.device_type') FROM cwa_user_activity"
    assert [tuple(r) for r in query(url, fmt_sql)] == [("EPUB", 1)]
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert [tuple(r) for r in query(url, day_sql)] == [(today, "DOWNLOAD", 1)]
    top_users = query(url, "SELECT user_id, user_name, COUNT(*) as activity_count FROM cwa_user_activity "
                           "GROUP BY user_id, user_name ORDER BY activity_count DESC LIMIT 10")
    assert [tuple(r) for r in top_users] == [(1, "admin", 1)]
    top_books = query(url, "SELECT item_id, item_title, COUNT(*) FROM cwa_user_activity "
                           "WHERE event_type IN ('READ', 'DOWNLOAD', 'EMAIL') GROUP BY item_id, item_title")
    assert [tuple(r) for r in top_books] == [(5, "Dune", 1)]
    assert [r[0] for r in query(url, device_sql)] == ["unknown"]


def test_timestamps_fields_and_extra_data_forms(url):
    recorder = ActivityRecorder(url)
    aware = datetime(2024, 3, 10, 23, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    recorder.log_activity(1, "a", "read", 1, extra_data={"format": "epub"}, timestamp=aware,
                          user_agent="Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)")
    recorder.log_activity(2, "b", "SEARCH", extra_data={"query": "dune"}, timestamp=0.0)
    recorder.log_activity("3", "c", "EMAIL", item_id="9", extra_data="EPUB",
                          timestamp=datetime(2024, 1, 2, 3, 4, 5))
    recorder.log_activity(4, "d", "my_custom", extra_data={"device_type": "tv", "n": 1.5, "ok": True})
    assert recorder.flush(10)
    recorder.close()
    rows = query(url, "SELECT timestamp, user_id, user_name, event_type, item_id, extra_data "
                      "FROM cwa_user_activity ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("2024-03-10 21:30:05", 1, "a", "READ", 1, '{"format":"epub","device_type":"tablet"}'),
        ("1970-01-01 00:00:00", 2, "b", "SEARCH", None, '{"query":"dune","device_type":"unknown"}'),
        ("2024-01-02 03:04:05", 3, "c", "EMAIL", 9, "EPUB"),  # CWA legacy plain string kept as it is
        (rows[3][0], 4, "d", "MY_CUSTOM", None, '{"device_type":"tv","n":1.5,"ok":true}'),
    ]


def test_invalid_and_unserialisable_events_are_dropped_counted_and_persisted(url):
    recorder = ActivityRecorder(url, warn_interval=3600)
    recorder.log_activity(1, "a", None)
    recorder.log_activity(1, "a", "   ")
    recorder.log_activity(1, "a", 42)
    recorder.log_activity(1, "a", "READ", extra_data={"when": datetime.now()})
    recorder.log_activity(1, "a", "READ", extra_data={"x": float("nan")})
    recorder.log_activity(1, "a", "READ", extra_data="{not json")
    recorder.log_activity(1, "a", "READ", extra_data=["EPUB"])
    recorder.log_activity(1, "a", "READ", item_id=1)
    assert recorder.flush(10)
    assert recorder.dropped == {"queue_full": 0, "database_error": 0, "serialization_error": 4, "invalid_event": 3}
    recorder.close()
    assert [r[0] for r in query(url, "SELECT item_id FROM cwa_user_activity")] == [1]
    drops = dict(tuple(r) for r in query(url, "SELECT reason, count FROM activity_shim_drops"))
    assert drops == {"serialization_error": 4, "invalid_event": 3}


def test_drop_counts_accumulate_across_processes(tmp_path):
    """count = count + n: a second recorder (another worker) adds to, never overwrites, the stored counts."""
    path = str(tmp_path / "a.db")
    for _ in range(2):
        recorder = ActivityRecorder(path)
        recorder.log_activity(1, "a", "")
        assert recorder.flush(10)
        recorder.close()
    assert sqlite3.connect(path).execute("SELECT count FROM activity_shim_drops WHERE reason='invalid_event'"
                                         ).fetchone() == (2,)


def test_over_long_strings_are_truncated_not_dropped(tmp_path):
    recorder = ActivityRecorder(str(tmp_path / "a.db"))
    recorder.log_activity(1, "n" * 5000, "SEARCH", item_title="t" * 5000, extra_data={"query": "q" * 5000})
    recorder.log_activity(1, "a", "READ", extra_data={"format": "EPUB", "blob": ["x" * 900] * 100})
    assert recorder.flush(10)
    assert sum(recorder.dropped.values()) == 0
    assert recorder.stats()["truncated"] == 4
    recorder.close()
    rows = sqlite3.connect(tmp_path / "a.db").execute(
        "SELECT user_name, item_title, extra_data FROM cwa_user_activity ORDER BY id").fetchall()
    assert len(rows[0][0]) == 1000 and len(rows[0][1]) == 1000
    assert json.loads(rows[0][2])["query"] == "q" * 1000
    assert json.loads(rows[1][2]) == {"format": "EPUB", "device_type": "unknown"}  # standard keys kept


def test_queue_full_is_counted_exactly_and_never_blocks(tmp_path):
    path = tmp_path / "a.db"
    recorder = ActivityRecorder(str(path), queue_size=50, busy_timeout_ms=100, max_retries=0)
    assert recorder.flush(10)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer is stuck: the queue fills up
    try:
        for i in range(5000):
            recorder.log_activity(1, "a", "READ", item_id=i)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert recorder.flush(10)
    recorder.close()
    stored = {r[0] for r in sqlite3.connect(path).execute("SELECT item_id FROM cwa_user_activity")}
    dropped = recorder.dropped
    assert dropped["queue_full"] > 4000
    assert len(stored) + dropped["queue_full"] + dropped["database_error"] == 5000


def test_flush_times_out_while_the_database_is_locked(tmp_path):
    path = tmp_path / "a.db"
    recorder = ActivityRecorder(str(path), busy_timeout_ms=2000, max_retries=0)
    assert recorder.flush(10)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    recorder.log_activity(1, "a", "READ", item_id=1)
    assert recorder.flush(0.3) is False
    blocker.execute("COMMIT")
    blocker.close()
    assert recorder.flush(10) is True
    recorder.close()


def test_log_after_close_is_a_counted_drop(tmp_path):
    recorder = ActivityRecorder(str(tmp_path / "a.db"))
    recorder.close()
    recorder.log_activity(1, "a", "READ")
    assert recorder.dropped["queue_full"] == 1


def test_database_url_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIVITY_DB", str(tmp_path / "env.db"))
    recorder = ActivityRecorder()
    recorder.log_activity(1, "a", "LOGIN")
    assert recorder.flush(10)
    recorder.close()
    assert sqlite3.connect(tmp_path / "env.db").execute("SELECT event_type FROM cwa_user_activity").fetchall() == [
        ("LOGIN",)]


def _run_script(code: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_pending_events_are_flushed_at_interpreter_exit(tmp_path):
    proc = _run_script("""
        from exporter.shim import ActivityRecorder
        r = ActivityRecorder("exit.db", flush_interval=30)
        for i in range(5000):
            r.log_activity(1, "a", "READ", item_id=i)
        # no flush, no close: atexit must write them
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    db = sqlite3.connect(tmp_path / "exit.db")
    assert db.execute("SELECT count(*), count(DISTINCT item_id) FROM cwa_user_activity").fetchone() == (5000, 5000)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_worker_has_a_working_writer_and_no_duplicates(tmp_path):
    """Like a Gunicorn worker: the recorder was created in the parent, the child logs through it."""
    proc = _run_script("""
        import os, sys
        from exporter.shim import ActivityRecorder
        r = ActivityRecorder("fork.db", flush_interval=30, batch_size=100000)
        r.log_activity(0, "parent", "LOGIN", item_id=-1)
        assert r.flush(10)
        for i in range(100):
            r.log_activity(0, "parent", "READ", item_id=i)   # still queued at fork time
        pids = []
        for w in range(3):
            pid = os.fork()
            if pid == 0:
                for i in range(1000):
                    r.log_activity(w + 1, "child", "READ", item_id=(w + 1) * 10000 + i)
                ok = r.flush(20)
                os._exit(0 if ok and r.stats()["written"] == 1000 else 3)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
        assert r.flush(10)
        print(codes)
        sys.exit(0 if codes == [0, 0, 0] else 1)
    """, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = sqlite3.connect(tmp_path / "fork.db")
    assert db.execute("SELECT count(*), count(DISTINCT item_id) FROM cwa_user_activity").fetchone() == (3101, 3101)
    assert db.execute("SELECT count(*) FROM cwa_user_activity WHERE user_name='parent'").fetchone() == (101,)
