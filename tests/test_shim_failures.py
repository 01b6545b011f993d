"""The database breaks while a real Flask app serves traffic: every request still answers 200, every event is
either stored or counted as dropped (exactly), drop counts are persisted, and logging resumes by itself."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest
from test_shim_flask import Served, make_app, run_clients

from exporter.shim import ActivityRecorder

N_THREADS = 8


def traffic(t, i):
    seq = t * 1_000_000 + i
    return "GET", f"/download/{seq}/epub", {"X-User-Id": "1", "X-User-Name": "u"}


def stored_ids(path) -> set[int]:
    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute("SELECT item_id FROM cwa_user_activity")}
    finally:
        db.close()


def persisted_drops(path) -> dict:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT reason, count FROM activity_shim_drops WHERE count > 0"))
    finally:
        db.close()


def run_with_incident(recorder, incident, after_s=1.5):
    """Traffic from N_THREADS clients while ``incident()`` runs, then ``after_s`` more seconds of traffic.

    Returns (all request sequence numbers, statuses, sequence numbers sent after the incident ended).
    """
    server = Served(make_app(recorder))
    stop = threading.Event()
    sent_after: list[int] = []
    incident_over = threading.Event()

    def request(t, i):
        method, path, headers = traffic(t, i)
        if incident_over.is_set():
            sent_after.append(t * 1_000_000 + i)
        return method, path, headers

    holder = {}
    runner = threading.Thread(target=lambda: holder.setdefault(
        "results", run_clients(server.port, N_THREADS, None, request, stop)))
    runner.start()
    try:
        time.sleep(0.5)
        incident()
        incident_over.set()
        time.sleep(after_s)
    finally:
        stop.set()
        runner.join(60)
        server.close()
    results = holder["results"]
    seqs = {t * 1_000_000 + i for t, i, _ in results}
    return seqs, {status for *_, status in results}, set(sent_after)


def check_accounting(recorder, sent: set[int], stored: set[int]):
    lost = sent - stored
    assert stored <= sent
    assert sum(recorder.dropped.values()) == len(lost), (recorder.dropped, len(lost))


def make_recorder(path, **kw):
    kw.setdefault("busy_timeout_ms", 200)
    kw.setdefault("max_retries", 2)
    kw.setdefault("retry_backoff", 0.05)
    kw.setdefault("queue_size", 20_000)
    return ActivityRecorder(str(path), **kw)


def test_locked_for_5_seconds(tmp_path):
    path = tmp_path / "activity.db"
    recorder = make_recorder(path)
    assert recorder.flush(10)

    def lock_for_5s():
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        time.sleep(5)
        blocker.execute("COMMIT")
        blocker.close()

    sent, statuses, sent_after = run_with_incident(recorder, lock_for_5s)
    assert recorder.flush(30)
    assert statuses == {200}
    stored = stored_ids(path)
    check_accounting(recorder, sent, stored)
    assert recorder.dropped["database_error"] > 0  # the lock outlasted busy timeout + retries
    assert sent_after and sent_after <= stored  # resumed by itself after the lock was released
    assert persisted_drops(path) == {k: v for k, v in recorder.dropped.items() if v}
    recorder.close()


def _can_make_read_only(path) -> str | None:
    if os.geteuid() != 0:
        return None
    if shutil.which("chattr") is None:
        return "running as root without chattr: cannot make a file read-only for root"
    probe = path.parent / "probe"
    probe.write_text("x")
    ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    probe.unlink()
    return None if ok else "running as root and this filesystem does not support chattr +i"


def _set_read_only(paths, on: bool):
    for p in paths:
        if not p.exists():
            continue
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i" if on else "-i", str(p)], check=True)
        else:
            p.chmod(0o444 if on else 0o644)


def test_read_only_database(tmp_path):
    path = tmp_path / "activity.db"
    reason = _can_make_read_only(path)
    if reason:
        pytest.skip(reason)
    recorder = make_recorder(path)
    assert recorder.flush(10)
    files = [path, tmp_path / "activity.db-wal", tmp_path / "activity.db-shm"]
    files = [f for f in files if f.name != "activity.db-shm"]  # readers need the shared-memory index

    def read_only_for_3s():
        _set_read_only(files, True)
        try:
            time.sleep(3)
        finally:
            _set_read_only(files, False)

    try:
        sent, statuses, sent_after = run_with_incident(recorder, read_only_for_3s)
    finally:
        _set_read_only(files, False)
    assert recorder.flush(30)
    assert statuses == {200}
    stored = stored_ids(path)
    check_accounting(recorder, sent, stored)
    assert recorder.dropped["database_error"] > 0
    assert sent_after and sent_after <= stored
    assert persisted_drops(path) == {k: v for k, v in recorder.dropped.items() if v}
    recorder.close()


def test_deleted_mid_run(tmp_path):
    path = tmp_path / "activity.db"
    recorder = make_recorder(path)
    assert recorder.flush(10)
    holder = {}

    def delete():
        # Keep the old file readable after the unlink, to count what was written into it.
        old = sqlite3.connect(path)
        old.execute("SELECT count(*) FROM cwa_user_activity").fetchone()
        holder["old"] = old
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(str(path) + suffix)
            except FileNotFoundError:
                pass

    sent, statuses, sent_after = run_with_incident(recorder, delete)
    assert recorder.flush(30)
    assert statuses == {200}
    assert path.exists(), "the shim did not recreate the database"
    new = stored_ids(path)
    old = {row[0] for row in holder["old"].execute("SELECT item_id FROM cwa_user_activity")}
    holder["old"].close()
    assert old and new
    check_accounting(recorder, sent, old | new)
    assert sent_after and sent_after <= new
    recorder.close()


def test_missing_directory_then_created(tmp_path):
    """A database in a directory that does not exist yet: drops counted, and logging starts once it exists."""
    path = tmp_path / "later" / "activity.db"
    recorder = make_recorder(path, max_retries=1)
    for i in range(10):
        recorder.log_activity(1, "u", "READ", item_id=i)
    assert recorder.flush(10)
    assert recorder.dropped["database_error"] == 10
    path.parent.mkdir()
    for i in range(10, 15):
        recorder.log_activity(1, "u", "READ", item_id=i)
    assert recorder.flush(10)
    assert stored_ids(path) == set(range(10, 15))
    assert persisted_drops(path) == {"database_error": 10}
    recorder.close()


def test_corrupt_database_is_left_alone_and_counted(tmp_path):
    path = tmp_path / "activity.db"
    garbage = b"this is not a database" * 1000
    path.write_bytes(garbage)
    recorder = make_recorder(path, max_retries=1)
    for i in range(7):
        recorder.log_activity(1, "u", "READ", item_id=i)
    assert recorder.flush(10)
    assert recorder.dropped["database_error"] == 7
    assert path.read_bytes() == garbage  # never "repaired" by overwriting someone's file
    recorder.close()
