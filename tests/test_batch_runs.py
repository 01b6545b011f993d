"""Runs of rows in one quarter hour (``Batch.runs``): the folders count by runs and slices instead of row by
row, so a chunk must give the same numbers as its rows folded one at a time, in time order or not."""

from __future__ import annotations

import random

from exporter import config as config_mod
from exporter.aggregate.activity import ActivityFolder
from exporter.aggregate.api import ApiFolder
from exporter.aggregate.daily import DailyFolder
from exporter.aggregate.events import Batch, Event, merge_runs
from exporter.aggregate.health import Health
from tests.activity_fixture import NOW

TYPES = ["READ", "DOWNLOAD", "EMAIL", "SEARCH", "LOGIN", "OPDS_ACCESS", "KOBO_SYNC", "SHELF_ADD", "LOGOUT"]


def naive_runs(ts, size):
    runs = []
    for i, t in enumerate(ts):
        unit = t // size
        if runs and runs[-1][0] == unit and runs[-1][2] == i:
            runs[-1] = (unit, runs[-1][1], i + 1)
        else:
            runs.append((unit, i, i + 1))
    return runs


def test_runs_sorted_unsorted_and_fractional():
    rng = random.Random(1)
    ordered = sorted(NOW - rng.uniform(0, 3 * 86400) for _ in range(2000))
    late = list(ordered)
    for i in rng.sample(range(len(late)), 40):
        late[i] -= rng.uniform(0, 7200)  # committed late
    whole = [int(t) for t in ordered]
    for ts in (ordered, late, whole, [], [5.0]):
        for size in (900, 60):
            runs = Batch(list(range(len(ts))), ts, *[[None] * len(ts)] * 6).runs(size)
            assert runs == naive_runs(ts, size)
    assert merge_runs([(1, 0, 2), (2, 2, 5), (3, 5, 6), (1, 6, 9)], {1: "a", 2: "a", 3: "b"}) == \
        [("a", 0, 5), ("b", 5, 6), ("a", 6, 9)]


def events(n, seed):
    rng = random.Random(seed)
    out = []
    t = NOW - 4 * 86400
    for i in range(n):
        t += rng.expovariate(1 / 120)
        etype = rng.choice(TYPES)
        stamp = t - (rng.uniform(0, 5000) if rng.random() < 0.05 else 0)  # some rows committed late
        extra = {"format": rng.choice(["EPUB", "PDF"]), "source": "search", "device_type": "mobile"}
        if etype in ("OPDS_ACCESS", "KOBO_SYNC"):
            extra = {"endpoint": "/opds/new", "method": "GET", "status": rng.choice([200, 503]),
                     "duration_ms": rng.uniform(1, 900)}
        elif etype == "SEARCH":
            extra = {"query": rng.choice(["dune", "tolkien"])}
        elif etype == "SHELF_ADD":
            extra = {"shelf": "To read"}
        item = rng.randint(1, 30) if etype in ("READ", "DOWNLOAD", "EMAIL", "SHELF_ADD") else None
        user = rng.randint(1, 6)
        out.append(Event(i + 1, stamp, user, f"user{user}", etype, item, None if item is None else f"Book {item}", extra))
    return out


def exposed(folder, now):
    folder.advance(now)
    samples = sorted((s.name, tuple(sorted(s.labels.items())), round(s.value, 6))
                     for family in folder.families(now) for s in family.samples)
    reports = [folder.report(day) for day in folder.days()] if isinstance(folder, DailyFolder) else []
    return samples, reports


def test_a_chunk_equals_its_rows_one_by_one(tmp_path):
    config = config_mod.load(overrides={"activity_db": str(tmp_path / "x.db"), "timezone": "Europe/Berlin",
                                        "report_start_time": "06:00"})
    rows = events(3000, seed=4)
    for make in (lambda: ActivityFolder(config, Health()), lambda: DailyFolder(config, Health()),
                 lambda: ApiFolder(config, Health())):
        one_by_one, chunked = make(), make()
        for event in rows:
            one_by_one.fold(event)
        for start in range(0, len(rows), 700):
            part = rows[start:start + 700]
            chunked.fold_batch(Batch(*[list(column) for column in zip(
                *[(e.id, e.ts, e.user_id, e.user_name, e.event_type, e.item_id, e.item_title, e.extra) for e in part])]))
        assert exposed(chunked, NOW) == exposed(one_by_one, NOW)
