"""Daily reports equal independent SQL over the same rows, with a 06:00 boundary in Europe/Berlin across DST."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from exporter import config as config_mod
from exporter.aggregate.daily import DailyFolder
from exporter.aggregate.events import Batch, EVENT_COLUMNS, parse_row
from exporter.aggregate.health import Health
from exporter.db import writer_engine
from exporter.schema import create_all

ZONE = "Europe/Berlin"
TYPES = ["LOGIN", "LOGOUT", "LOGIN_FAILED", "READ", "DOWNLOAD", "EMAIL", "SEARCH", "API_CALL", "OPDS_ACCESS",
         "SHELF_ADD"]


def make_config(**kw):
    base = dict(timezone=ZONE, report_start_time="06:00", report_include_errors=True, session_gap="30m")
    base.update(kw)
    return config_mod.load(overrides=base, environ={})


def fmt(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def populate(path, periods, n_per_period=1500, seed=7):
    """Random events in the given UTC periods: users with ids, name-only rows, anonymous rows, 5xx statuses."""
    create_all(writer_engine(path))
    rng = random.Random(seed)
    rows = []
    for start, end in periods:
        t0 = datetime.fromisoformat(start).replace(tzinfo=timezone.utc).timestamp()
        t1 = datetime.fromisoformat(end).replace(tzinfo=timezone.utc).timestamp()
        times = sorted(rng.uniform(t0, t1) for _ in range(n_per_period))
        # bursts so sessions have several events
        for t in times:
            kind = rng.random()
            if kind < 0.8:
                uid = rng.randint(1, 12)
                uname = f"user{uid}"
            elif kind < 0.9:
                uid, uname = None, rng.choice(["ghost", "mallory"])
            else:
                uid, uname = None, None
            etype = rng.choice(TYPES)
            item = rng.randint(1, 15) if etype in ("READ", "DOWNLOAD", "EMAIL") and rng.random() < 0.9 else None
            extra = {}
            if etype in ("API_CALL", "OPDS_ACCESS"):
                extra = {"endpoint": "/opds/x", "method": "GET", "status": rng.choice([200, 200, 500, "503", 404])}
            rows.append((fmt(t), uid, uname, etype, item, f"Book {item}" if item else None,
                         json.dumps(extra) if extra else None))
            # a follow-up event from the same user shortly after, to make multi-event sessions
            if uid is not None and rng.random() < 0.3:
                rows.append((fmt(t + rng.uniform(10, 1500)), uid, uname, "READ", item, None, None))
    rows.sort(key=lambda r: r[0])
    conn = sqlite3.connect(path)
    conn.executemany("INSERT INTO cwa_user_activity (timestamp, user_id, user_name, event_type, item_id, "
                     "item_title, extra_data) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()


def fold_db(path, config, now=None):
    folder = DailyFolder(config, Health())
    conn = sqlite3.connect(path)
    health = Health()
    for row in conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM cwa_user_activity ORDER BY id"):
        event = parse_row(row, health)
        if event is not None:
            folder.fold(event)
    conn.close()
    folder.advance(now if now is not None else datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp())
    return folder


def sql_report(conn, day: date, zone: str, start_time: str, gap: float) -> dict:
    """The report computed independently: boundaries from zoneinfo, everything else in SQL."""
    hh, mm = map(int, start_time.split(":"))
    tz = ZoneInfo(zone)
    lo = datetime(day.year, day.month, day.day, hh, mm, tzinfo=tz).astimezone(timezone.utc)
    nd = day + timedelta(days=1)
    hi = datetime(nd.year, nd.month, nd.day, hh, mm, tzinfo=tz).astimezone(timezone.utc)
    lo_s, hi_s = lo.strftime("%Y-%m-%d %H:%M:%S"), hi.strftime("%Y-%m-%d %H:%M:%S")
    rng = "timestamp >= ? AND timestamp < ?"
    args = (lo_s, hi_s)

    def one(sql, extra=()):
        return conn.execute(sql, args + tuple(extra)).fetchone()[0]

    total = one(f"SELECT COUNT(*) FROM cwa_user_activity WHERE {rng}")
    users = one(f"SELECT COUNT(DISTINCT user_id) FROM cwa_user_activity WHERE {rng} AND user_id IS NOT NULL") + one(
        f"SELECT COUNT(DISTINCT user_name) FROM cwa_user_activity WHERE {rng} AND user_id IS NULL "
        "AND user_name IS NOT NULL AND user_name != ''")
    nl = "event_type NOT IN ('LOGIN', 'LOGOUT', 'LOGIN_FAILED')"
    active = one(f"SELECT COUNT(DISTINCT user_id) FROM cwa_user_activity WHERE {rng} AND user_id IS NOT NULL "
                 f"AND {nl}") + one(
        f"SELECT COUNT(DISTINCT user_name) FROM cwa_user_activity WHERE {rng} AND user_id IS NULL "
        f"AND user_name IS NOT NULL AND user_name != '' AND {nl}")
    views = one(f"SELECT COUNT(*) FROM cwa_user_activity WHERE {rng} AND event_type IN ('READ','DOWNLOAD','EMAIL')")
    failed = one(f"SELECT COUNT(*) FROM cwa_user_activity WHERE {rng} AND event_type = 'LOGIN_FAILED'")
    api5 = one(f"SELECT COUNT(*) FROM cwa_user_activity WHERE {rng} AND event_type IN "
               "('API_CALL','OPDS_ACCESS','KOBO_SYNC') AND json_valid(extra_data) AND "
               "CAST(json_extract(extra_data, '$.status') AS INTEGER) BETWEEN 500 AND 599")
    top = [list(r) for r in conn.execute(
        f"SELECT item_id, COUNT(*) AS c FROM cwa_user_activity WHERE {rng} AND item_id IS NOT NULL AND "
        "event_type IN ('READ','DOWNLOAD','EMAIL') GROUP BY item_id ORDER BY c DESC, item_id LIMIT 10", args)]
    # peak: counts per UTC half hour, turned into local wall-clock slots (Berlin offsets are whole hours)
    slots: dict = {}
    for slot, count in conn.execute(
            f"SELECT substr(timestamp, 1, 14) || CASE WHEN CAST(substr(timestamp, 15, 2) AS INTEGER) < 30 "
            f"THEN '00' ELSE '30' END AS s, COUNT(*) FROM cwa_user_activity WHERE {rng} GROUP BY s", args):
        local = datetime.fromisoformat(slot + ":00").replace(tzinfo=timezone.utc).astimezone(tz).strftime("%H:%M")
        slots[local] = slots.get(local, 0) + count
    start_min = hh * 60 + mm
    peak = None
    if slots:
        peak = min(slots, key=lambda s: (-slots[s], (int(s[:2]) * 60 + int(s[3:]) - start_min) % 1440))
    # sessions: gaps-and-islands with window functions over all rows, kept if started inside the day
    row = conn.execute(
        """
        WITH e AS (SELECT COALESCE(CAST(user_id AS TEXT), 'n:' || user_name) AS u, id,
                          CAST(strftime('%s', timestamp) AS INTEGER) AS t
                   FROM cwa_user_activity WHERE user_id IS NOT NULL OR (user_name IS NOT NULL AND user_name != '')),
             g AS (SELECT u, t, CASE WHEN LAG(t) OVER w IS NULL OR t - LAG(t) OVER w > :gap THEN 1 ELSE 0 END AS nw
                   FROM e WINDOW w AS (PARTITION BY u ORDER BY t, id)),
             s AS (SELECT u, t, SUM(nw) OVER (PARTITION BY u ORDER BY t ROWS UNBOUNDED PRECEDING) AS sid FROM g),
             sess AS (SELECT MIN(t) AS st, MAX(t) - MIN(t) AS dur, COUNT(*) AS n FROM s GROUP BY u, sid)
        SELECT COUNT(*), AVG(dur) FROM sess
        WHERE n >= 2 AND st >= CAST(strftime('%s', :lo) AS INTEGER) AND st < CAST(strftime('%s', :hi) AS INTEGER)
        """, {"gap": gap, "lo": lo_s, "hi": hi_s}).fetchone()
    return {"total_events": total, "user_count": users, "active_users": active, "content_views": views,
            "failed_logins": failed, "api_5xx": api5, "top": top, "peak_usage_time": peak,
            "sessions": row[0], "average_session_duration": round(row[1], 3) if row[1] is not None else 0.0}


PERIODS = [("2024-03-28 00:00:00", "2024-04-03 00:00:00"), ("2024-10-24 00:00:00", "2024-10-30 00:00:00")]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("daily") / "activity.db")
    populate(path, PERIODS)
    return path


@pytest.mark.parametrize("start_time,zone", [("06:00", "Europe/Berlin"), ("00:00", "UTC"),
                                             ("22:30", "America/New_York")])
def test_reports_equal_sql(db, start_time, zone):
    config = make_config(report_start_time=start_time, timezone=zone)
    folder = fold_db(db, config)
    conn = sqlite3.connect(db)
    days = folder.days()
    assert date(2024, 3, 30) in days and date(2024, 10, 26) in days  # both DST changes are covered
    checked = 0
    for day in days:
        rep = folder.report(day)
        want = sql_report(conn, day, zone, start_time, config.session_gap)
        got = {k: rep[k] for k in want if k != "top"}
        got["top"] = [[c["item_id"], c["count"]] for c in rep["top_10_content"]]
        assert got == want, day
        checked += 1
    assert checked >= 12
    # days without events have no report; every event landed in exactly one day
    assert folder.report(date(2024, 6, 1)) is None
    total = conn.execute("SELECT COUNT(*) FROM cwa_user_activity").fetchone()[0]
    assert sum(folder.report(d)["total_events"] for d in days) == total


def test_dst_days_have_23_and_25_hours():
    folder = DailyFolder(make_config(), Health())
    # the report day 2024-03-30 06:00 .. 03-31 06:00 contains the spring-forward change, 10-26 the fall-back
    lo, hi = folder.bounds.interval(date(2024, 3, 30))
    assert hi - lo == 23 * 3600
    lo, hi = folder.bounds.interval(date(2024, 10, 26))
    assert hi - lo == 25 * 3600
    lo, hi = folder.bounds.interval(date(2024, 3, 31))
    assert hi - lo == 24 * 3600
    # 05:59:59 Berlin summer time on 2024-04-01 still belongs to 2024-03-31
    ts = datetime(2024, 4, 1, 5, 59, 59, tzinfo=ZoneInfo(ZONE)).timestamp()
    assert folder.bounds.day_of(ts) == date(2024, 3, 31).toordinal()
    assert folder.bounds.day_of(ts + 1) == date(2024, 4, 1).toordinal()


def test_paging_state_retention_and_gauges(db):
    config = make_config()
    folder = fold_db(db, config)
    day = date(2024, 3, 29)
    full = folder.report(day, limit=1000)
    page = folder.report(day, limit=3, offset=2)
    assert page["top_10_content"] == full["top_10_content"][2:5]
    assert all(c["title"] == f"Book {c['item_id']}" for c in full["top_10_content"])

    # a checkpoint restores the same reports
    restored = DailyFolder(config, Health())
    restored.load_state(json.loads(json.dumps(folder.state())))
    for d in folder.days():
        assert restored.report(d) == folder.report(d)
    # a checkpoint taken with another boundary is ignored, not misread
    other = DailyFolder(make_config(report_start_time="00:00"), Health())
    other.load_state(folder.state())
    assert other.days() == []

    # gauges show the last complete day
    now = datetime(2024, 3, 30, 7, 0, tzinfo=ZoneInfo(ZONE)).timestamp()  # day 2024-03-30 is in progress
    fams = {f.name: f.samples[0].value for f in folder.families(now)}
    rep = folder.report(date(2024, 3, 29))
    assert fams["activity_daily_report_users"] == rep["user_count"]
    assert fams["activity_daily_report_content_views"] == rep["content_views"]
    assert fams["activity_daily_report_failed_logins"] == rep["failed_logins"]
    assert fams["activity_daily_report_start_timestamp_seconds"] == datetime(
        2024, 3, 29, 6, 0, tzinfo=ZoneInfo(ZONE)).timestamp()

    # retention: 3 days kept before 2024-11-01 → only days from 2024-10-29 on survive
    short = fold_db(db, make_config(report_retention_days=3),
                    now=datetime(2024, 11, 1, 12, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
    assert short.days() and min(short.days()) >= date(2024, 10, 29)


def test_errors_excluded_unless_enabled(db):
    folder = fold_db(db, make_config(report_include_errors=False))
    rep = folder.report(folder.days()[0])
    assert "failed_logins" not in rep and "api_5xx" not in rep
    assert "activity_daily_report_failed_logins" not in {f.name for f in folder.families(0)}


def test_fold_batch_equals_fold(db):
    """Column batches (the refresher's fast path) give the same reports as event-by-event folding."""
    config = make_config()
    one = fold_db(db, config)
    conn = sqlite3.connect(db)
    health = Health()
    events = [parse_row(r, health) for r in conn.execute(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM cwa_user_activity ORDER BY id")]
    events = [e for e in events if e is not None]

    def Columns(evs):
        return Batch(*[list(col) for col in zip(*[(e.id, e.ts, e.user_id, e.user_name, e.event_type, e.item_id,
                                                      e.item_title, e.extra) for e in evs])])

    batched = DailyFolder(config, health)
    for i in range(0, len(events), 500):
        batched.fold_batch(Columns(events[i:i + 500]))
    batched.advance(datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp())
    assert batched.days() == one.days()
    assert all(batched.report(d) == one.report(d) for d in one.days())
