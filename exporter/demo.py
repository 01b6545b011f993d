"""Demo data with seed 000's distributions, written through the real ``ActivityRecorder``.

8 users with realistic names, 100-300 events a day, evening peak (18-22 h), heavier weekends, formats
EPUB 40 % / MOBI 25 % / PDF 20 % / AZW3 10 % / KEPUB 5 %, API calls OPDS 60 % / Kobo 25 % / REST 10 % /
Web UI 5 %, and searches that sometimes lead to a read or download within minutes. CWA's history tables
(imports, conversions, enforcement, EPUB fixes) and a Calibre-shaped library are filled too.
"""

from __future__ import annotations

import os
import random
import threading
import time

from sqlalchemy import insert

from exporter import db, schema

USERS = [
    (1, "admin"), (2, "alice.martin"), (3, "bob_nguyen"), (4, "carla.rossi"),
    (5, "dmitri.k"), (6, "emma.schmidt"), (7, "farid.haddad"), (8, "grace.obi"),
]
USER_AGENTS = {
    "desktop": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "mobile": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
    "tablet": "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "ereader": "Mozilla/5.0 (Linux; U; Android 2.0; en-us;) AppleWebKit/538.1 (KHTML, like Gecko) Version/4.0 Mobile Safari/538.1 (Kobo Touch 0377/4.38.21908)",
    "reader_app": "KOReader/2024.11 (https://koreader.rocks/) LuaSocket/3.0",
}
FORMATS = (["EPUB"] * 40) + (["MOBI"] * 25) + (["PDF"] * 20) + (["AZW3"] * 10) + (["KEPUB"] * 5)
SOURCES = ["search", "book_detail", "series", "author", "category", "shelf", "direct"]
SHELVES = ["To Read", "Favourites", "Book Club", "Sci-Fi Classics", "Kids"]
SEARCH_TERMS = ["dune", "tolkien", "fantasy", "murder mystery", "python", "le guin", "space opera", "cookbook",
                "history of rome", "poetry", "pratchett", "nonexistent title"]
EVENT_MIX = [("LOGIN", 8), ("LOGOUT", 2), ("LOGIN_FAILED", 1), ("READ", 18), ("DOWNLOAD", 14), ("SEARCH", 14),
             ("EMAIL", 5), ("SHELF_ADD", 4), ("SHELF_REMOVE", 1), ("API", 33)]
API_MIX = [("OPDS", 60), ("Kobo Sync", 25), ("REST API", 10), ("Web UI", 5)]
API_ENDPOINTS = {
    "OPDS": ("OPDS_ACCESS", ["/opds", "/opds/new", "/opds/search/<query>", "/opds/download/<book_id>/<book_format>/",
                             "/opds/cover/<book_id>", "/opds/series/<book_id>"]),
    "Kobo Sync": ("KOBO_SYNC", ["/kobo/<auth_token>/v1/library/sync", "/kobo/<auth_token>/v1/library/<book_uuid>/state",
                                "/kobo/<auth_token>/v1/initialization"]),
    "REST API": ("API_CALL", ["/api/books", "/api/book/<int:book_id>", "/ajax/listbooks"]),
    "Web UI": ("API_CALL", ["/", "/book/<int:book_id>", "/shelf/<int:shelf_id>"]),
}
TITLES = ["Dune", "The Hobbit", "Neuromancer", "The Left Hand of Darkness", "Guards! Guards!", "Foundation",
          "The Name of the Rose", "Beloved", "Hyperion", "The Dispossessed", "Snow Crash", "Kindred",
          "A Wizard of Earthsea", "The Martian", "Circe", "Piranesi", "The Road", "Emma", "Middlemarch", "Ubik"]


def _weighted(rng: random.Random, mix):
    total = sum(w for _, w in mix)
    pick = rng.uniform(0, total)
    for value, weight in mix:
        pick -= weight
        if pick <= 0:
            return value
    return mix[-1][0]


def _hour(rng: random.Random) -> int:
    """Evening peak 18-22 h, quiet nights."""
    weights = [1, 1, 1, 1, 1, 1, 2, 4, 5, 5, 5, 5, 6, 5, 5, 5, 6, 7, 12, 14, 14, 13, 10, 4]
    return _weighted(rng, list(enumerate(weights)))


class DemoWriter:
    """Produces one realistic event at a time for a given moment."""

    def __init__(self, recorder, rng: random.Random, books: int):
        self.recorder = recorder
        self.rng = rng
        self.books = books
        self.devices = {uid: rng.choice(list(USER_AGENTS)) for uid, _ in USERS}

    def book(self):
        book_id = min(int(self.rng.paretovariate(1.2)), self.books)
        return book_id, f"{TITLES[book_id % len(TITLES)]} ({book_id})" if book_id > len(TITLES) else TITLES[book_id - 1]

    def event(self, ts: float) -> None:
        rng = self.rng
        uid, name = rng.choice(USERS[:3] * 3 + USERS)  # a few heavy readers
        agent = USER_AGENTS[self.devices[uid] if rng.random() < 0.8 else rng.choice(list(USER_AGENTS))]
        kind = _weighted(rng, EVENT_MIX)
        log = self.recorder.log_activity
        if kind in ("READ", "DOWNLOAD", "EMAIL"):
            book_id, title = self.book()
            log(uid, name, kind, book_id, title,
                {"format": rng.choice(FORMATS), "source": rng.choice(SOURCES)} if kind != "EMAIL" else {"format": rng.choice(FORMATS)},
                timestamp=ts, user_agent=agent)
        elif kind == "SEARCH":
            log(uid, name, "SEARCH", extra_data={"query": rng.choice(SEARCH_TERMS)}, timestamp=ts, user_agent=agent)
            if rng.random() < 0.55:  # searches that lead somewhere
                book_id, title = self.book()
                log(uid, name, rng.choice(["READ", "DOWNLOAD"]), book_id, title,
                    {"format": rng.choice(FORMATS), "source": "search"},
                    timestamp=ts + rng.randint(5, 400), user_agent=agent)
        elif kind in ("SHELF_ADD", "SHELF_REMOVE"):
            book_id, title = self.book()
            log(uid, name, kind, book_id, title, {"shelf": rng.choice(SHELVES)}, timestamp=ts, user_agent=agent)
        elif kind == "LOGIN_FAILED":
            log(None, None, "LOGIN_FAILED", extra_data={"username_attempted": rng.choice([name, "root", "test"])},
                timestamp=ts, user_agent=agent)
        elif kind == "API":
            category = _weighted(rng, API_MIX)
            event_type, endpoints = API_ENDPOINTS[category]
            status = 200 if rng.random() < 0.97 else rng.choice([304, 401, 404, 500])
            log(uid, name, event_type, extra_data={
                "endpoint": rng.choice(endpoints), "method": "GET" if rng.random() < 0.9 else "POST",
                "status": status, "duration_ms": round(rng.lognormvariate(3.3, 0.8)), "category": category,
            }, timestamp=ts, user_agent=USER_AGENTS["ereader" if category == "Kobo Sync" else "reader_app"])
        else:
            log(uid, name, kind, timestamp=ts, user_agent=agent)


def _history(engine, rng: random.Random, start: float, days: int) -> None:
    """CWA's own history tables, in local time as CWA writes them."""
    imports, conversions, enforcement, fixes = [], [], [], []
    for day in range(days):
        for _ in range(rng.randint(0, 12)):
            ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start + day * 86400 + rng.randint(0, 86399)))
            fmt = rng.choice(["epub", "epub", "mobi", "pdf", "azw3"])
            name = f"{rng.choice(TITLES)}.{fmt}"
            imports.append({"timestamp": ts, "filename": name, "original_backed_up": "True",
                            "source": rng.choice(["Web Upload", "Ingest Folder", "Ingest Folder", "OPDS"]),
                            "method": rng.choice(["Calibredb Add", "Calibredb Add", "Auto Convert"])})
            if fmt != "epub":
                conversions.append({"timestamp": ts, "filename": name, "original_format": fmt,
                                    "original_backed_up": "True", "end_format": "epub"})
            if rng.random() < 0.5:
                book_id = rng.randint(1, 60)
                enforcement.append({"timestamp": ts, "book_id": book_id, "book_title": TITLES[book_id % len(TITLES)],
                                    "author": "Demo Author", "file_path": f"/library/{book_id}.epub",
                                    "trigger_type": rng.choice(["auto -log", "auto -log", "manual -dir", "auto -log (failed)"])})
            if rng.random() < 0.3:
                fixes.append({"timestamp": ts, "filename": name, "manually_triggered": "False",
                              "num_of_fixes_applied": str(rng.randint(1, 4)), "original_backed_up": "True",
                              "file_path": f"/library/{name}", "fixes_applied": "encoding"})
    with engine.begin() as conn:
        for table, rows in ((schema.imports, imports), (schema.conversions, conversions),
                            (schema.enforcement, enforcement), (schema.epub_fixes, fixes)):
            if rows:
                conn.execute(insert(table), rows)


def generate(out: str, days: int = 30, seed: int = 42, reuse: bool = False, now: float | None = None) -> dict:
    """Write ``out/cwa.db`` (activity + CWA history) and ``out/library/metadata.db``; returns their paths."""
    from exporter.demo_library import build_library
    from exporter.shim import ActivityRecorder

    os.makedirs(out, exist_ok=True)
    activity_db = os.path.join(out, "cwa.db")
    library_dir = os.path.join(out, "library")
    paths = {"activity_db": activity_db, "calibre_library": library_dir}
    if reuse and os.path.exists(activity_db) and os.path.exists(os.path.join(library_dir, "metadata.db")):
        return paths
    for path in (activity_db, activity_db + "-wal", activity_db + "-shm"):
        if os.path.exists(path):
            os.remove(path)
    rng = random.Random(seed)
    now = time.time() if now is None else now
    start_day = int(now // 86400 - days + 1) * 86400
    book_count = build_library(library_dir, rng, books=rng.randint(500, 2000), start=start_day - 5 * 365 * 86400)
    recorder = ActivityRecorder(activity_db, queue_size=1_000_000)
    writer = DemoWriter(recorder, rng, books=book_count)
    for day in range(days):
        day_start = start_day + day * 86400
        weekday = time.gmtime(day_start).tm_wday  # Monday = 0
        count = rng.randint(100, 300)
        if weekday >= 5:
            count = int(count * 1.3)
        for _ in range(count):
            ts = day_start + _hour(rng) * 3600 + rng.randint(0, 3599)
            if ts <= now:
                writer.event(ts)
    recorder.flush(timeout=120)
    recorder.close()
    _history(db.writer_engine(activity_db), rng, start_day, days)
    return paths


class LiveEvents:
    """Keeps adding a few events every few seconds, so demo dashboards move."""

    def __init__(self, activity_db: str, interval: float = 3.0, seed: int | None = None):
        from exporter.shim import ActivityRecorder

        self.recorder = ActivityRecorder(activity_db)
        self.rng = random.Random(seed)
        self.writer = DemoWriter(self.recorder, self.rng, books=500)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-live-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for _ in range(self.rng.randint(1, 6)):
                self.writer.event(time.time())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.recorder.close()
