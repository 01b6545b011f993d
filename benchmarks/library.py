"""Library benchmark: a 100,000-book Calibre library, refresh time and series count with default caps.

Targets (issue 4): a library refresh <= 2 s; total series of the library metrics with default caps <= 5,000.
Also measured: the cost of a refresh when nothing changed (change detection only), the series added by a
100,000-request API flood with unique paths, and the history source folding 100,000 rows per table.

    /tmp/venv/bin/python benchmarks/library.py [--books 100000] [--write]

``--write`` replaces the "Library" section of ``benchmarks/RESULTS.md`` (other sections are left alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from calibre_fixture import Book, add_book, build_large  # noqa: E402
from exporter import schema  # noqa: E402
from exporter.aggregate.api import ApiFolder  # noqa: E402
from exporter.aggregate.events import Event  # noqa: E402
from exporter.aggregate.health import Health  # noqa: E402
from exporter.aggregate.history import HistorySource  # noqa: E402
from exporter.aggregate.library import LibrarySource  # noqa: E402
from exporter.config import load  # noqa: E402
from exporter.db import reader_engine, writer_engine  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def series_count(families) -> int:
    return len({(s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples})


def timed(fn, repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_library(tmp: str, books: int) -> dict:
    path = os.path.join(tmp, "metadata.db")
    build_s = timed(lambda: build_large(path, books))[0]
    config = load(overrides={"calibre_library": path}, environ={})
    cold = []
    for _ in range(3):  # a fresh source each time: the full read the first refresh does
        src = LibrarySource(config, Health())
        cold += timed(lambda: src.refresh(time.time()))
        src.close()
    src = LibrarySource(config, Health())
    src.refresh(time.time())
    unchanged = timed(lambda: src.refresh(time.time()), repeat=20)
    assert src.reads == 1
    after_write = []
    for i in range(3):
        conn = sqlite3.connect(path)
        add_book(conn, Book(f"New {i}", rating=8, series="Fresh"))
        conn.commit()
        conn.close()
        after_write += timed(lambda: src.refresh(time.time()))
    assert src.reads == 4
    fams = src.families(time.time())
    return {
        "books": books, "build_s": build_s, "size_mb": os.path.getsize(path) / 1e6,
        "cold_median_s": statistics.median(cold), "cold_max_s": max(cold),
        "unchanged_median_ms": statistics.median(unchanged) * 1000,
        "after_write_median_s": statistics.median(after_write),
        "series": series_count(fams),
        "series_by_family": {f.name: len(f.samples) for f in fams},
    }


def bench_api_flood(n: int = 100_000) -> dict:
    config = load(environ={})
    folder = ApiFolder(config, Health())
    rnd = random.Random(1)
    events = []
    for i in range(n):
        word = "".join(rnd.choice("abcdefghijklmnop") for _ in range(8))
        path = rnd.choice([f"/opds/search/{word}", f"/kobo/{uuid.uuid4()}/v1/library/sync", f"/api/{word}", f"/{word}"])
        events.append(Event(i, 1.7e9 + i * 13, i, f"user-{uuid.uuid4()}", rnd.choice(["OPDS_ACCESS", "API_CALL"]),
                            None, None, {"endpoint": path, "method": rnd.choice(["GET", word]),
                                         "status": rnd.choice([200, 404, word]), "duration_ms": rnd.random() * 300}))
    seconds = timed(lambda: [folder.fold(e) for e in events])[0]
    fams = folder.families(0)
    return {"events": n, "fold_s": seconds, "series": series_count(fams)}


def bench_history(tmp: str, n: int = 100_000) -> dict:
    path = os.path.join(tmp, "cwa.db")
    schema.create_all(writer_engine(path))
    rnd = random.Random(2)
    conn = sqlite3.connect(path)
    ts = "2024-05-01 10:00:00"
    conn.executemany("INSERT INTO cwa_import (timestamp, filename, original_backed_up) VALUES (?, ?, 'True')",
                     ((ts, f"b{i}.{rnd.choice(['epub', 'pdf', 'mobi'])}") for i in range(n)))
    conn.executemany("INSERT INTO cwa_conversions (timestamp, filename, original_format, original_backed_up, "
                     "end_format) VALUES (?, 'x', ?, 'True', 'epub')", ((ts, rnd.choice(["mobi", "azw3"])) for _ in range(n)))
    conn.executemany("INSERT INTO cwa_enforcement (timestamp, book_id, book_title, author, file_path, trigger_type) "
                     "VALUES (?, ?, ?, 'A', '/x', 'auto -log')", ((ts, b, f"T{b}") for b in
                                                                   (rnd.randint(1, 100_000) for _ in range(n))))
    conn.executemany("INSERT INTO epub_fixes (timestamp, filename, manually_triggered, num_of_fixes_applied, "
                     "original_backed_up, file_path) VALUES (?, 'f', '0', '2', 'False', '/f')", ((ts,) for _ in range(n)))
    conn.commit()
    conn.close()
    src = HistorySource(load(environ={}), Health(), reader_engine(path))
    first = timed(lambda: src.refresh(time.time()))[0]
    idle = timed(lambda: src.refresh(time.time()), repeat=10)
    return {"rows": 4 * n, "first_s": first, "idle_ms": statistics.median(idle) * 1000,
            "series": series_count(src.families(time.time()))}


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"nproc {nproc}, {cpu or platform.machine()}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"


def section(lib: dict, api: dict, hist: dict, command: str) -> str:
    ok = lambda b: "met" if b else "**missed**"  # noqa: E731
    fam = ", ".join(f"{k} {v}" for k, v in lib["series_by_family"].items())
    return f"""## Library

Command: `{command}`
Machine: {machine()}

| measure | result | target |
| --- | --- | --- |
| library size | {lib['books']:,} books, metadata.db {lib['size_mb']:.1f} MB (built in {lib['build_s']:.1f} s) | |
| library refresh, full read (median of 3 / max) | {lib['cold_median_s']:.2f} s / {lib['cold_max_s']:.2f} s | ≤ 2 s: {ok(lib['cold_max_s'] <= 2)} |
| library refresh after a write (median of 3) | {lib['after_write_median_s']:.2f} s | |
| library refresh, unchanged (change check only, median of 20) | {lib['unchanged_median_ms']:.3f} ms | |
| library series, default caps | {lib['series']:,} | ≤ 5,000: {ok(lib['series'] <= 5000)} |
| API flood: {api['events']:,} events, unique paths/UUIDs/users | {api['series']:,} series, folded in {api['fold_s']:.2f} s | bounded by endpoint_cap (200) |
| history: {hist['rows']:,} rows (4 tables, 100,000 distinct books enforced) | first refresh {hist['first_s']:.2f} s, idle {hist['idle_ms']:.1f} ms, {hist['series']} series | |

Library series by family: {fam}.
"""


def write_section(text: str) -> None:
    current = open(RESULTS, encoding="utf-8").read() if os.path.exists(RESULTS) else "# Benchmark results\n"
    pattern = re.compile(r"^## Library\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    with open(RESULTS, "w", encoding="utf-8") as f:
        f.write(updated.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", type=int, default=100_000)
    parser.add_argument("--write", action="store_true", help="update the Library section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = bench_library(tmp, args.books)
        api = bench_api_flood()
        hist = bench_history(tmp)
    command = "/tmp/venv/bin/python benchmarks/library.py" + (f" --books {args.books}" if args.books != 100_000 else "") \
        + (" --write" if args.write else "")
    text = section(lib, api, hist, command)
    print(text)
    if args.write:
        write_section(text)
    return 0 if lib["cold_max_s"] <= 2 and lib["series"] <= 5000 else 1


if __name__ == "__main__":
    sys.exit(main())
