"""Backfill end to end: OpenMetrics file → promtool blocks → a real Prometheus → queries equal SQL counts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone

import pytest

import calibre_fixture
from exporter import config as config_mod
from exporter.backfill import write_openmetrics
from test_daily import populate

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
END = datetime(2024, 4, 4, tzinfo=timezone.utc).timestamp()


def utc(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("backfill")
    db = str(d / "activity.db")
    populate(db, [("2024-03-28 00:00:00", "2024-04-02 00:00:00")], n_per_period=3000, seed=11)
    lib = str(d / "metadata.db")
    calibre_fixture.build(lib, [calibre_fixture.Book(f"B{i}", timestamp=f"2024-03-{20 + i:02d} 10:00:00+00:00")
                                for i in range(10)])
    config = config_mod.load(overrides=dict(activity_db=db, calibre_library=lib, user_cap=5), environ={})
    return d, db, lib, config


def test_file_shape(source, tmp_path):
    _, db, _, config = source
    seen = []
    out = tmp_path / "bf.om"
    summary = write_openmetrics(config, str(out), 3600, progress=lambda done, total: seen.append((done, total)),
                                end=END, extra_labels={"job": "activity"})
    lines = out.read_text().splitlines()
    assert lines[-1] == "# EOF" and summary["samples"] > 1000
    assert seen and seen[-1][0] == seen[-1][1] == sqlite3.connect(db).execute(
        "SELECT COUNT(*) FROM cwa_user_activity").fetchone()[0]
    # families are contiguous; within a series timestamps ascend and counter values never decrease
    families, last = [], {}
    for line in lines[:-1]:
        if line.startswith("# TYPE"):
            families.append(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        series, value, ts = line.rsplit(" ", 2)
        assert series.split("{")[0].startswith(families[-1])
        assert 'job="activity"' in series
        prev = last.get(series)
        if prev is not None:
            assert float(ts) == prev[1] + 3600
            if families[-1] != "calibre_books":
                assert float(value) >= prev[0]
        last[series] = (float(value), float(ts))
    assert families == ["activity_events", "activity_api_requests", "calibre_books"]
    # the user cap holds: at most 5 user values plus "other"
    users = {s.split('user="')[1].split('"')[0] for s in last if 'user="' in s}
    assert len(users - {"other"}) <= 5 and "other" in users


def promtool_check():
    if not (os.path.exists(PROMTOOL) and os.path.exists(PROMETHEUS)):
        pytest.skip("prometheus/promtool not installed (Debian package 'prometheus')")


@pytest.fixture(scope="module")
def prometheus(source, tmp_path_factory):
    promtool_check()
    d, _, _, config = source
    out = d / "backfill.om"
    write_openmetrics(config, str(out), 3600, end=END)
    data = tmp_path_factory.mktemp("tsdb")
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h",
                    str(out), str(data)], check=True, capture_output=True, timeout=300)
    cfg = d / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1m\n")
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                             "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("prometheus did not start: " + proc.stderr.read().decode()[-2000:])
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(base: str, q: str, at: float) -> float:
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": at})
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


@pytest.mark.parametrize("day", ["2024-03-29", "2024-03-30", "2024-03-31"])
def test_prometheus_increase_equals_sql(prometheus, source, day):
    _, db, _, _ = source
    conn = sqlite3.connect(db)
    lo = f"{day} 00:00:00"
    t0 = utc(lo)
    t1 = t0 + 86400
    hi = datetime.fromtimestamp(t1, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    want = conn.execute("SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp >= ? AND timestamp < ?",
                        (lo, hi)).fetchone()[0]
    assert want > 100
    got = query(prometheus, "sum(activity_events_total)", t1) - query(prometheus, "sum(activity_events_total)", t0)
    assert got == want
    assert query(prometheus, "sum(increase(activity_events_total[1d]))", t1) == pytest.approx(want, abs=1e-6)
    reads = conn.execute("SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp >= ? AND timestamp < ? "
                         "AND event_type = 'READ'", (lo, hi)).fetchone()[0]
    assert query(prometheus, 'sum(increase(activity_events_total{event_type="READ"}[1d]))', t1) == \
        pytest.approx(reads, abs=1e-6)
    api = conn.execute("SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp >= ? AND timestamp < ? "
                       "AND event_type IN ('API_CALL', 'OPDS_ACCESS', 'KOBO_SYNC')", (lo, hi)).fetchone()[0]
    assert query(prometheus, "sum(increase(activity_api_requests_total[1d]))", t1) == pytest.approx(api, abs=1e-6)


def test_prometheus_calibre_books(prometheus):
    # books were added on 03-20 .. 03-29 at 10:00 UTC: by 03-25 00:00 five of them exist
    assert query(prometheus, "calibre_books", utc("2024-03-25 00:00:00")) == 5
    assert query(prometheus, "calibre_books", utc("2024-04-01 00:00:00")) == 10
