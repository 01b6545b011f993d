"""prune / anonymize on SQLite and PostgreSQL, including a 1,000,000-row prune while the shim writes."""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
import time
import uuid
from datetime import date, datetime, timezone

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from exporter import config as config_mod
from exporter.db import writer_engine
from exporter.ops import anonymize, prune
from exporter.ops_cli import add_commands
from exporter.schema import create_all

DAY = 86400
NOW = time.time()


def cfg(db):
    return config_mod.load(overrides={"activity_db": db}, environ={})


def ts_text(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def bulk_sqlite(path, n_old, n_recent):
    conn = sqlite3.connect(path)
    old_base = NOW - 800 * DAY
    conn.executemany(
        "INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type, item_id, extra_data) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        ((ts_text(old_base + i * 0.03), i % 50, f"user{i % 50}", "READ", i % 1000, '{"format":"EPUB"}')
         for i in range(n_old)))
    conn.executemany(
        "INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type) VALUES (?, ?, ?, 'LOGIN')",
        ((ts_text(NOW - 30 * DAY + i), i % 50, f"user{i % 50}") for i in range(n_recent)))
    conn.commit()
    conn.close()


def prune_while_writing(db_url):
    """Threads log through two ActivityRecorders (two app processes' worth) until ``stop`` is set."""
    from exporter.shim.recorder import ActivityRecorder

    recorders = [ActivityRecorder(db_url, flush_at_exit=False), ActivityRecorder(db_url, flush_at_exit=False)]
    run_id = uuid.uuid4().hex[:8]
    stop = threading.Event()
    tokens = []  # (token, time logged)
    lock = threading.Lock()

    def writer(n):
        rec = recorders[n % 2]
        i = 0
        while not stop.is_set():
            token = f"{run_id}-{n}-{i}"
            rec.log_activity(n, f"writer{n}", "READ", item_id=i, item_title=token, extra_data={"format": "EPUB"})
            with lock:
                tokens.append((token, time.time()))
            i += 1
            if i % 20 == 0:
                time.sleep(0.01)  # a steady app-like stream over the whole prune

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    return threads, recorders, tokens, run_id, stop


def finish(threads, recorders, stop):
    stop.set()
    for t in threads:
        t.join()
    for r in recorders:
        assert r.flush(60)
    dropped = [dict(r.dropped) for r in recorders]
    for r in recorders:
        r.close()
    return dropped


@pytest.mark.slow
def test_prune_million_rows_while_shim_writes(tmp_path):
    db = str(tmp_path / "activity.db")
    create_all(writer_engine(db))
    bulk_sqlite(db, 1_000_000, 10_000)
    config = cfg(db)
    lines = []
    threads, recorders, tokens, run_id, stop = prune_while_writing(db)
    time.sleep(0.2)
    started = time.time()
    deleted = prune(config, 365 * DAY, confirm=True, batch_size=5000, out=lines.append)
    took = time.time() - started
    time.sleep(0.2)
    dropped = finish(threads, recorders, stop)
    assert deleted == 1_000_000
    assert all(sum(d.values()) == 0 for d in dropped), dropped  # no write error, nothing dropped
    conn = sqlite3.connect(db)
    stored = {r[0] for r in conn.execute("SELECT item_title FROM cwa_user_activity WHERE item_title LIKE ?",
                                         (run_id + "-%",))}
    assert stored == {t for t, _ in tokens}  # no new event lost
    during = sum(1 for _, at in tokens if started <= at <= started + took)
    assert during > 100, during  # the shim really wrote while the prune ran
    cutoff = ts_text(NOW - 365 * DAY)
    assert conn.execute("SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp < ?", (cutoff,)).fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM cwa_user_activity WHERE event_type = 'LOGIN'").fetchone()[0] == 10_000
    assert lines[0].startswith("prune: 1000000 of ")
    print(f"pruned 1,000,000 rows in {took:.1f}s while 4 threads wrote {during} events meanwhile")


def test_prune_dry_run_and_nothing_to_do(tmp_path):
    db = str(tmp_path / "a.db")
    create_all(writer_engine(db))
    bulk_sqlite(db, 100, 10)
    lines = []
    assert prune(cfg(db), 365 * DAY, confirm=False, out=lines.append) == 0
    assert "100 of 110" in lines[0] and "--yes" in lines[1]
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM cwa_user_activity").fetchone()[0] == 110
    assert prune(cfg(db), 365 * DAY, confirm=True, batch_size=7, out=lines.append) == 100
    assert prune(cfg(db), 365 * DAY, confirm=True, out=lines.append) == 0


ROWS = [
    # timestamp, user_id, user_name, event_type, extra_data
    ("2023-05-01 10:00:00", 7, "alice", "LOGIN", '{"ip": "10.0.0.1", "device_type": "mobile"}'),
    ("2023-05-01 10:01:00", None, "mallory", "LOGIN_FAILED", '{"username_attempted": "admin", "ip": "6.6.6.6"}'),
    ("2023-05-01 10:02:00", 7, "alice", "DOWNLOAD", "EPUB"),  # legacy plain string stays
    ("2023-05-01 10:03:00", 8, "bob", "READ", '{"format": "PDF"}'),
    ("2023-05-01 10:04:00", 8, "bob", "READ", "{not json"),
    ("2024-05-01 10:00:00", 7, "alice", "LOGIN", '{"ip": "10.0.0.1"}'),  # after the date: untouched
]


def insert_rows(engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type, extra_data) "
                          "VALUES (:t, :u, :n, :e, :x)"),
                     [dict(t=t, u=u, n=n, e=e, x=x) for t, u, n, e, x in ROWS])


def check_anonymized(engine):
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT user_id, user_name, extra_data FROM cwa_user_activity ORDER BY id")).all()
    assert [r[1] for r in rows] == ["User7", None, "User7", "User8", "User8", "alice"]
    assert json.loads(rows[0][2]) == {"device_type": "mobile"}
    assert json.loads(rows[1][2]) == {}
    assert rows[2][2] == "EPUB" and rows[3][2] == '{"format": "PDF"}' and rows[4][2] == "{not json"
    assert json.loads(rows[5][2]) == {"ip": "10.0.0.1"}


def run_anonymize(config, engine):
    lines = []
    assert anonymize(config, date(2024, 1, 1), confirm=False, out=lines.append, engine=engine) == 0
    assert "5 events" in lines[0] and "5 user names" in lines[0]
    assert anonymize(config, date(2024, 1, 1), confirm=True, out=lines.append, batch_size=2, engine=engine) == 5
    check_anonymized(engine)
    assert anonymize(config, date(2024, 1, 1), confirm=True, out=lines.append, engine=engine) == 0  # idempotent


def test_anonymize_sqlite(tmp_path):
    db = str(tmp_path / "a.db")
    engine = writer_engine(db)
    create_all(engine)
    insert_rows(engine)
    run_anonymize(cfg(db), engine)


@pytest.fixture
def pg_db(pg_url):
    """A fresh database of its own in the shared throwaway cluster."""
    name = "ops_" + uuid.uuid4().hex[:10]
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    engine = writer_engine(url)
    create_all(engine)
    yield url, engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def test_anonymize_postgresql(pg_db):
    url, engine = pg_db
    insert_rows(engine)
    run_anonymize(cfg(url), engine)


def test_prune_postgresql_while_shim_writes(pg_db):
    url, engine = pg_db
    old = NOW - 800 * DAY
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type) "
            "SELECT to_char(to_timestamp(:base + g * 0.5) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), g % 50, "
            "'user' || (g % 50), 'READ' FROM generate_series(1, 200000) AS g"), {"base": old})
        conn.execute(text("INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type) "
                          "VALUES (:t, 1, 'u', 'LOGIN')"), {"t": ts_text(NOW - DAY)})
    threads, recorders, tokens, run_id, stop = prune_while_writing(url)
    time.sleep(0.2)
    started = time.time()
    deleted = prune(cfg(url), 365 * DAY, confirm=True, batch_size=5000, out=lambda *_: None)
    took = time.time() - started
    dropped = finish(threads, recorders, stop)
    assert deleted == 200_000
    assert all(sum(d.values()) == 0 for d in dropped), dropped
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(text("SELECT item_title FROM cwa_user_activity "
                                                  "WHERE item_title LIKE :p"), {"p": run_id + "-%"})}
        left = conn.execute(text("SELECT COUNT(*) FROM cwa_user_activity")).scalar()
    assert stored == {t for t, _ in tokens}
    assert sum(1 for _, at in tokens if started <= at <= started + took) > 10
    assert left == 1 + len(tokens)


def cli(argv):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_handlers(tmp_path, capsys):
    from test_daily import populate

    db = str(tmp_path / "a.db")
    populate(db, [("2024-03-28 00:00:00", "2024-03-30 00:00:00")], n_per_period=300)
    config = config_mod.load(overrides={"activity_db": db, "report_retention_days": 100000}, environ={})
    args = cli(["report", "--date", "2024-03-28"])
    assert args.handler(args, config) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["status"] == "success" and body["data"]["date"] == "2024-03-28"
    assert body["data"]["total_events"] == sqlite3.connect(db).execute(
        "SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp LIKE '2024-03-28%'").fetchone()[0]
    args = cli(["report", "--date", "2024-03-28", "--format", "csv"])
    assert args.handler(args, config) == 0
    assert capsys.readouterr().out.startswith("=== DAILY USAGE REPORT ===\nMetric,Value\n")
    for argv in (["report", "--date", "2024-02-30"], ["prune", "--older-than", "soon"],
                 ["anonymize", "--before", "yesterday"], ["backfill", "--out", "x", "--step", "0"],
                 ["backfill", "--out", "x", "--label", "bad label"]):
        args = cli(argv)
        assert args.handler(args, config) == 2, argv
    assert cli(["report", "--date", "2020-01-01"]).handler(cli(["report", "--date", "2020-01-01"]), config) == 1
    args = cli(["prune", "--older-than", "1d"])
    assert args.handler(args, config) == 0  # without --yes nothing is deleted
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM cwa_user_activity").fetchone()[0] > 0
    out = tmp_path / "bf.om"
    args = cli(["backfill", "--out", str(out), "--step", "1h", "--end", "2024-03-31", "--label", "job=x", "--quiet"])
    assert args.handler(args, config) == 0
    assert out.read_text().endswith("# EOF\n")
