"""The refresher's guarantees: O(new rows), exactly-once across restarts and out-of-order commits, counters
that never go down when rows are pruned, and a broken database that is reported, not fatal."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time

import pytest
from sqlalchemy import create_engine, text

from exporter import config as config_mod
from exporter import db, schema
from exporter.aggregate.cursor import IdCursor
from exporter.refresher import Refresher
from tests.activity_fixture import NOW, make_rows, valid_count, write_rows
from tests.promtext import by_label, samples


def events_total(refresher) -> float:
    return sum(by_label(samples(refresher.snapshot.text), "activity_events_total", "event_type", "user").values())


def make_config(path, **changes):
    return config_mod.load(overrides={"activity_db": path, "chunk_size": 500, **changes})


def test_incremental_refresh_reads_only_new_rows(tmp_path):
    path = str(tmp_path / "cwa.db")
    rows = make_rows(3000, seed=3)
    write_rows(path, rows[:2000])
    refresher = Refresher(make_config(path), clock=lambda: NOW)
    refresher.refresh()
    assert refresher.health.ingested_rows["cwa_user_activity"] == 2000
    write_rows(path, rows[2000:])
    refresher.refresh()
    assert refresher.health.ingested_rows["cwa_user_activity"] == len(rows)  # the first 2000 were not read again
    assert events_total(refresher) == valid_count(path)
    refresher.refresh()
    assert refresher.health.ingested_rows["cwa_user_activity"] == len(rows)


def test_restart_resumes_from_checkpoint(tmp_path):
    path, state_file = str(tmp_path / "cwa.db"), str(tmp_path / "state.json")
    rows = make_rows(3000, seed=4)
    write_rows(path, rows[:1500])
    first = Refresher(make_config(path, state=state_file), clock=lambda: NOW)
    first.refresh()
    first.checkpoint()
    before = events_total(first)
    write_rows(path, rows[1500:])
    second = Refresher(make_config(path, state=state_file), clock=lambda: NOW)
    assert second.cursor.safe == first.cursor.safe
    assert events_total(second) == 0  # nothing published before the first refresh
    second.refresh()
    assert second.health.ingested_rows["cwa_user_activity"] == len(rows)
    assert events_total(second) == valid_count(path) > before
    # Changing a setting that alters label values invalidates the checkpoint instead of mixing series.
    third = Refresher(make_config(path, state=state_file, timezone="Europe/Berlin"), clock=lambda: NOW)
    assert third.cursor.safe == 0


def test_pruned_rows_never_lower_counters(tmp_path):
    path = str(tmp_path / "cwa.db")
    write_rows(path, make_rows(2000, seed=5)[:2000])
    refresher = Refresher(make_config(path), clock=lambda: NOW)
    refresher.refresh()
    before = samples(refresher.snapshot.text)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM cwa_user_activity WHERE id <= 1500")
    conn.commit()
    conn.close()
    write_rows(path, make_rows(10, seed=6))
    refresher.refresh()
    after = samples(refresher.snapshot.text)
    for (name, labels), value in before.items():
        if name.endswith("_total") or name.endswith("_count") or name.endswith("_bucket"):
            assert after[(name, labels)] >= value, name
    before_total = sum(by_label(before, "activity_events_total", "event_type", "user").values())
    assert events_total(refresher) == before_total + valid_count(path, 2001, 2010)


def test_broken_database_reported_then_recovers(tmp_path):
    path = str(tmp_path / "cwa.db")
    write_rows(path, make_rows(500, seed=7))
    refresher = Refresher(make_config(path), clock=lambda: NOW)
    assert refresher.refresh()
    good = refresher.snapshot
    total = events_total(refresher)
    shutil.move(path, path + ".away")
    assert not refresher.refresh()
    values = samples(refresher.snapshot.text)
    assert by_label(values, "activity_exporter_database_up", "database")["activity"] == 0
    assert by_label(values, "activity_exporter_refresh_errors_total", "stage")["activity"] == 1
    assert events_total(refresher) == total  # the last good numbers are still served
    assert refresher.snapshot.last_success == good.last_success
    with open(path, "wb") as f:
        f.write(b"this is not a sqlite database at all" * 100)
    assert not refresher.refresh()
    os.remove(path)
    shutil.move(path + ".away", path)
    assert refresher.refresh()
    assert by_label(samples(refresher.snapshot.text), "activity_exporter_database_up", "database")["activity"] == 1
    assert events_total(refresher) == total


def test_activity_database_is_opened_read_only(tmp_path):
    path = str(tmp_path / "cwa.db")
    write_rows(path, make_rows(50, seed=8))
    os.chmod(path, 0o444)
    try:
        refresher = Refresher(make_config(path), clock=lambda: NOW)
        assert refresher.refresh(), refresher.last_error
        with refresher.engine.connect() as conn, pytest.raises(Exception):
            conn.execute(text("DELETE FROM cwa_user_activity"))
    finally:
        os.chmod(path, 0o644)


def test_shim_drop_counts_exposed(tmp_path):
    path = str(tmp_path / "cwa.db")
    engine = db.writer_engine(path)
    schema.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO activity_shim_drops(reason, count) VALUES ('queue_full', 7), ('database_error', 2)"))
    refresher = Refresher(make_config(path), clock=lambda: NOW)
    refresher.refresh()
    drops = by_label(samples(refresher.snapshot.text), "activity_exporter_events_dropped_total", "reason")
    assert drops == {"queue_full": 7, "database_error": 2}


def test_id_cursor_waits_for_gaps_then_gives_up():
    cursor = IdCursor(grace=60)
    for row_id in (1, 2, 4, 5):
        cursor.mark(row_id)
    cursor.settle(now=1000)
    assert cursor.safe == 2 and cursor.is_new(3) and not cursor.is_new(4)
    cursor.settle(now=1059)
    assert cursor.safe == 2
    cursor.mark(3)
    cursor.settle(now=1060)
    assert cursor.safe == 5 and not cursor.seen
    cursor.mark(7)
    cursor.settle(now=2000)
    cursor.settle(now=2061)  # id 6 never came (a rolled-back transaction)
    assert cursor.safe == 7


def test_postgres_out_of_order_commits_counted_once(pg_url):
    """Two transactions take ids 1 and 2; the later id commits first. Both are counted, once."""
    engine = create_engine(pg_url)
    schema.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE cwa_user_activity RESTART IDENTITY"))
    config = config_mod.load(overrides={"activity_db": pg_url})
    refresher = Refresher(config, clock=time.time)
    insert = text("INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type, extra_data)"
                  " VALUES (:ts, 1, 'admin', :etype, '{}') RETURNING id")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    slow = engine.connect()
    slow_tx = slow.begin()
    slow_id = slow.execute(insert, {"ts": stamp, "etype": "READ"}).scalar()
    with engine.begin() as fast:
        fast_id = fast.execute(insert, {"ts": stamp, "etype": "DOWNLOAD"}).scalar()
    assert slow_id < fast_id
    refresher.refresh()
    counts = by_label(samples(refresher.snapshot.text), "activity_events_total", "event_type", "user")
    assert counts == {("DOWNLOAD", "admin"): 1}
    assert refresher.cursor.safe < slow_id  # the gap is held open for the slow transaction
    slow_tx.commit()
    slow.close()
    refresher.refresh()
    refresher.refresh()
    counts = by_label(samples(refresher.snapshot.text), "activity_events_total", "event_type", "user")
    assert counts == {("DOWNLOAD", "admin"): 1, ("READ", "admin"): 1}
    assert refresher.cursor.safe == fast_id
    engine.dispose()


def test_postgres_history_rows_out_of_order_counted_once(pg_url):
    """The CWA history tables use the same gap-holding cursor: an import committed late is still counted."""
    from exporter.aggregate.health import Health
    from exporter.aggregate.history import HistorySource

    engine = create_engine(pg_url)
    schema.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE cwa_import RESTART IDENTITY"))
    source = HistorySource(config_mod.load(overrides={"activity_db": pg_url}), Health(), db.reader_engine(pg_url))
    insert = text("INSERT INTO cwa_import (timestamp, filename, original_backed_up) VALUES (:ts, :name, 'True')")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    slow = engine.connect()
    slow_tx = slow.begin()
    slow.execute(insert, {"ts": stamp, "name": "slow.epub"})
    with engine.begin() as fast:
        fast.execute(insert, {"ts": stamp, "name": "fast.pdf"})
    source.refresh(time.time())
    assert sum(source.imports.values()) == 1
    slow_tx.commit()
    slow.close()
    source.refresh(time.time())
    source.refresh(time.time())
    assert sum(source.imports.values()) == 2
    formats = {fmt for (_, _, fmt) in source.imports}
    assert formats == {"EPUB", "PDF"}
    engine.dispose()


def test_nested_json_values_are_dropped_not_fatal(tmp_path):
    """``{"format": ["x"]}`` or ``{"device_type": {...}}``: label values must be plain, so such values are
    dropped (counted as invalid_extra_data) and the row still counts."""
    path = str(tmp_path / "odd.db")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW - 100))
    extras = [("READ", '{"format": ["x"], "device_type": {"a": 1}, "source": [1]}'),
              ("OPDS_ACCESS", '{"endpoint": ["/x"], "method": {"a": 1}, "status": [500], "duration_ms": [1]}'),
              ("SEARCH", '{"query": {"q": 1}}'), ("SHELF_ADD", '{"shelf": ["s"]}'),
              ("READ", '{"format": "epub", "device_type": "mobile"}')]
    write_rows(path, [dict(timestamp=stamp, user_id=1, user_name="a", event_type=t, item_id=5, item_title="T",
                           extra_data=x) for t, x in extras])
    refresher = Refresher(make_config(path), clock=lambda: NOW)
    assert refresher.refresh(), refresher.last_error
    assert events_total(refresher) == 5
    assert refresher.health.malformed_rows[("cwa_user_activity", "invalid_extra_data")] == 4
    values = samples(refresher.snapshot.text)
    assert values[("activity_format_events_total",
                   frozenset({("event_type", "READ"), ("format", "UNKNOWN"), ("user", "a")}))] == 1
    assert values[("activity_device_events_total", frozenset({("device_type", "mobile")}))] == 1


def test_a_bug_while_folding_is_reported_not_raised(tmp_path):
    path = str(tmp_path / "cwa.db")
    write_rows(path, make_rows(200, seed=8))
    refresher = Refresher(make_config(path), clock=lambda: NOW)

    def broken(batch):
        raise RuntimeError("bug")

    refresher.activity.fold_batch = broken
    assert refresher.refresh() is False  # returns, so the refresher thread lives on
    assert "folding: bug" in refresher.last_error
    assert refresher.health.refresh_errors["fold"] == 1


@pytest.mark.parametrize("min_rows", [0, 1], ids=["in-process", "helper"])
def test_invalid_utf8_text_is_read_with_replacement(tmp_path, min_rows):
    """Text columns holding bytes that are not UTF-8 (or BLOBs) are decoded with U+FFFD, not fatal to a chunk,
    the same way whether this process or the helper reads them."""
    path = str(tmp_path / "bytes.db")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW - 100))
    write_rows(path, [dict(timestamp=stamp, user_id=1, user_name="a", event_type="READ", item_id=5,
                           item_title="T", extra_data='{"format": "epub"}')])
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type, item_id, item_title,"
                 " extra_data) VALUES (?, 2, CAST(x'62ff' AS TEXT), CAST(x'52454144' AS TEXT), 6, x'54ff',"
                 " CAST(x'7b22666f726d6174223a202265707562227d' AS BLOB))", (stamp,))
    conn.commit()
    conn.close()
    refresher = Refresher(make_config(path, reader_process_min_rows=min_rows), clock=lambda: NOW)
    assert refresher.refresh(), refresher.last_error
    refresher.stop()
    assert events_total(refresher) == 2
    values = samples(refresher.snapshot.text)
    assert values[("activity_events_total", frozenset({("event_type", "READ"), ("user", "b\ufffd")}))] == 1
    assert values[("activity_format_events_total",
                   frozenset({("event_type", "READ"), ("format", "EPUB"), ("user", "b\ufffd")}))] == 1
