"""The helper process that reads and parses big backlogs: same numbers as reading in-process, and a helper
that dies or meets a broken database loses nothing and counts nothing twice."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

from exporter import config as config_mod
from exporter.refresher import Refresher
from tests.activity_fixture import NOW, make_db, valid_count
from tests.promtext import by_label, samples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELF_METRICS = ("activity_exporter_refresh_duration", "activity_exporter_last_refresh")


def refresher_for(path, helper: bool, **changes) -> Refresher:
    overrides = {"activity_db": path, "chunk_size": 300, "reader_process_min_rows": 1 if helper else 0, **changes}
    return Refresher(config_mod.load(overrides=overrides), clock=lambda: NOW)


def exposition(refresher) -> list[str]:
    return [line for line in refresher.snapshot.text.decode().splitlines() if not line.startswith(SELF_METRICS)]


def test_helper_gives_the_same_exposition_as_reading_here(tmp_path):
    path = make_db(str(tmp_path / "cwa.db"), n=4000, seed=11)
    here, helper = refresher_for(path, helper=False), refresher_for(path, helper=True)
    try:
        assert here.refresh() and helper.refresh(), helper.last_error
        assert helper._helper.pid is not None  # it really went through the helper process
        assert here._helper.pid is None
        assert exposition(helper) == exposition(here)
        assert helper.health.state() == here.health.state()  # rows read and malformed rows, by reason
        total = sum(by_label(samples(helper.snapshot.text), "activity_events_total", "event_type", "user").values())
        assert total == valid_count(path)
    finally:
        here.stop()
        helper.stop()


def test_helper_that_dies_mid_stream_loses_nothing(tmp_path):
    path = make_db(str(tmp_path / "cwa.db"), n=4000, seed=12)
    reference = refresher_for(path, helper=False)
    refresher = refresher_for(path, helper=True, chunk_size=100)
    folded = []
    fold = refresher._fold

    def fold_then_kill(batch):
        fold(batch)
        folded.append(len(batch))
        if len(folded) == 3:
            os.kill(refresher._helper.pid, 9)

    refresher._fold = fold_then_kill
    try:
        assert reference.refresh()
        assert refresher.refresh(), refresher.last_error  # fell back to reading here, from the cursor
        assert len(folded) > 3 and refresher._helper.pid is None
        assert exposition(refresher) == exposition(reference)
        assert refresher.health.state() == reference.health.state()
    finally:
        reference.stop()
        refresher.stop()


def test_database_error_in_the_helper_is_reported_and_the_helper_stays(tmp_path):
    path = str(tmp_path / "cwa.db")
    conn = sqlite3.connect(path)  # a table the backlog query can read but the helper's query cannot
    conn.execute("CREATE TABLE cwa_user_activity (id INTEGER PRIMARY KEY, timestamp TEXT, event_type TEXT)")
    conn.execute("INSERT INTO cwa_user_activity VALUES (1, '2026-01-01 10:00:00', 'LOGIN')")
    conn.commit()
    conn.close()
    refresher = refresher_for(path, helper=True)
    try:
        assert not refresher.refresh()
        assert "no such column" in refresher.last_error
        values = by_label(samples(refresher.snapshot.text), "activity_exporter_database_up", "database")
        assert values == {"activity": 0}
        pid = refresher._helper.pid
        assert not refresher.refresh()
        assert refresher._helper.pid == pid  # answered the error and waited for the next request
    finally:
        refresher.stop()


def test_a_host_script_without_main_guard_is_not_run_again(tmp_path):
    """The helper is started with ``-m exporter.activity_reader``, so the host's own script never re-runs."""
    path = make_db(str(tmp_path / "cwa.db"), n=500, seed=13)
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(f"""
        from exporter import config
        from exporter.refresher import Refresher
        print("host script ran", flush=True)
        refresher = Refresher(config.load(overrides={{"activity_db": {path!r}, "reader_process_min_rows": 1}}))
        print("refreshed", refresher.refresh(), refresher._helper.pid is not None, flush=True)
        refresher.stop()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["host script ran", "refreshed True True"]
