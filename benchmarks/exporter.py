"""Exporter benchmark: cold ingest, incremental refresh, /metrics latency, peak RSS, and the query-driven way.

    python benchmarks/exporter.py                      # 1M and 10M rows
    python benchmarks/exporter.py --sizes 200000       # quick run
    python benchmarks/exporter.py --write              # also record the table in benchmarks/RESULTS.md
    python benchmarks/exporter.py --unique-durations   # API rows with µs durations: each extra_data unique

Each size runs in its own process so peak RSS belongs to that size alone. The query-driven comparison runs
seed 000's SQL for the User Activity tab (default view: last 30 days) per scrape, as exporters that query the
database on every scrape do, on the same database in the same run.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.gen import generate  # noqa: E402

# Seed 000's User Activity queries (its own SQL), over the default 30-day range.
SINCE = "datetime('now', '-30 days')"
SEED_QUERIES = [
    f"SELECT COUNT(*) FROM cwa_user_activity WHERE timestamp >= {SINCE}",
    f"SELECT COUNT(DISTINCT user_id) FROM cwa_user_activity WHERE timestamp >= {SINCE}",
    f"SELECT COUNT(*) FROM cwa_user_activity WHERE event_type IN ('DOWNLOAD', 'EMAIL') AND timestamp >= {SINCE}",
    f"SELECT COUNT(DISTINCT item_id) FROM cwa_user_activity WHERE event_type = 'READ' AND timestamp >= {SINCE}",
    f"SELECT COUNT(*) FROM cwa_user_activity WHERE event_type = 'SEARCH' AND timestamp >= {SINCE}",
    f"SELECT date(timestamp) AS day, event_type, COUNT(*) FROM cwa_user_activity WHERE timestamp >= {SINCE} GROUP BY day, event_type",
    f"SELECT strftime('%w', timestamp), strftime('%H', timestamp), COUNT(*) FROM cwa_user_activity WHERE timestamp >= {SINCE} GROUP BY 1, 2",
    f"""SELECT UPPER(COALESCE(CASE WHEN json_valid(extra_data) THEN json_extract(extra_data, '$.format') ELSE extra_data END,
        'UNKNOWN')) AS format, COUNT(*) FROM cwa_user_activity WHERE event_type IN ('DOWNLOAD', 'EMAIL') AND timestamp >= {SINCE} GROUP BY format""",
    f"SELECT user_id, user_name, COUNT(*) AS c FROM cwa_user_activity WHERE timestamp >= {SINCE} GROUP BY user_id ORDER BY c DESC LIMIT 10",
    f"""SELECT item_id, item_title, COUNT(*) AS c FROM cwa_user_activity WHERE event_type IN ('READ', 'DOWNLOAD', 'EMAIL')
        AND timestamp >= {SINCE} GROUP BY item_id ORDER BY c DESC LIMIT 10""",
    f"SELECT timestamp, user_name, extra_data FROM cwa_user_activity WHERE event_type = 'SEARCH' AND timestamp >= {SINCE} ORDER BY timestamp DESC LIMIT 15",
    f"""SELECT strftime('%Y-%W', timestamp), COUNT(DISTINCT item_id) FROM cwa_user_activity WHERE event_type = 'READ'
        AND timestamp >= {SINCE} GROUP BY 1""",
    f"""SELECT user_name, UPPER(json_extract(extra_data, '$.format')), COUNT(*) FROM cwa_user_activity
        WHERE event_type IN ('DOWNLOAD', 'READ', 'EMAIL') AND timestamp >= {SINCE} GROUP BY 1, 2""",
    f"""SELECT json_extract(extra_data, '$.source'), COUNT(*) FROM cwa_user_activity WHERE event_type IN ('READ', 'DOWNLOAD')
        AND json_valid(extra_data) AND timestamp >= {SINCE} GROUP BY 1""",
    f"""SELECT json_extract(extra_data, '$.device_type'), COUNT(*) FROM cwa_user_activity WHERE json_valid(extra_data)
        AND timestamp >= {SINCE} GROUP BY 1""",
    f"""SELECT AVG(m) FROM (SELECT (julianday(MAX(timestamp)) - julianday(MIN(timestamp))) * 24 * 60 AS m
        FROM cwa_user_activity WHERE timestamp >= {SINCE} GROUP BY user_id, date(timestamp) HAVING COUNT(*) > 1)""",
    f"""SELECT json_extract(extra_data, '$.shelf'), event_type, COUNT(*) FROM cwa_user_activity
        WHERE event_type IN ('SHELF_ADD', 'SHELF_REMOVE') AND timestamp >= {SINCE} GROUP BY 1, 2""",
]


COLD_RUNS = 3


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrape_latencies(app, n: int = 300):
    from cheroot import wsgi

    server = wsgi.Server(("127.0.0.1", 0), app, numthreads=4)
    server.prepare()
    port = server.bind_addr[1]
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    size = 0
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", "/metrics")
        body = conn.getresponse().read()
        times.append(time.perf_counter() - start)
        size = len(body)
    conn.close()
    server.stop()
    return times, size


def helper_peak_rss_mb(pid) -> float:
    """Peak RSS of the helper process that read the backlog (0 when none ran)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_size(rows: int, workdir: str, unique_durations: bool = False) -> dict:
    from exporter import config as config_mod
    from exporter.refresher import Refresher
    from exporter.web import create_app

    path = os.path.join(workdir, f"bench-{rows}.db")
    now = time.time()
    started = time.perf_counter()
    generate(path, rows, now=now - 3600, unique_durations=unique_durations)
    generated = time.perf_counter() - started
    config = config_mod.load(overrides={"activity_db": path})
    colds, refresher = [], None
    for _ in range(COLD_RUNS):  # this machine's speed swings within minutes: the median of a few
        if refresher is not None:
            refresher.stop()
            refresher = None
            gc.unfreeze()  # the refresher froze its objects (gc.freeze); let the collector free the old ones
            gc.collect()
        refresher = Refresher(config)
        started = time.perf_counter()
        assert refresher.refresh(), refresher.last_error
        colds.append(time.perf_counter() - started)
    cold = statistics.median(colds)

    times, size = scrape_latencies(create_app(config, refresher))
    increments = []
    for attempt in range(COLD_RUNS):  # 100,000 new rows each time, a day's worth
        generate(path, 100_000, now=now, days=1, first_id=rows + 1 + attempt * 100_000,
                 unique_durations=unique_durations)
        started = time.perf_counter()
        assert refresher.refresh(), refresher.last_error
        increments.append(time.perf_counter() - started)
    incremental = statistics.median(increments)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    helper_rss_mb = helper_peak_rss_mb(refresher._helper.pid)
    refresher.stop()
    series = sum(1 for line in refresher.snapshot.text.splitlines() if line and not line.startswith(b"#"))
    del refresher

    # The same cold ingest read in this one process (no helper), over the same table (now 100,000 rows longer).
    single = Refresher(config_mod.load(overrides={"activity_db": path, "reader_process_min_rows": 0}))
    started = time.perf_counter()
    assert single.refresh(), single.last_error
    single_rate = (rows + COLD_RUNS * 100_000) / (time.perf_counter() - started)
    single.stop()
    del single

    conn = sqlite3.connect(path)
    query_times = []
    for _ in range(3):
        started = time.perf_counter()
        for query in SEED_QUERIES:
            conn.execute(query).fetchall()
        query_times.append(time.perf_counter() - started)
    conn.close()
    os.remove(path)
    return {
        "rows": rows, "generate_s": generated, "cold_s": cold, "cold_runs_s": colds, "cold_rows_per_s": rows / cold,
        "cold_single_process_rows_per_s": single_rate,
        "incremental_100k_s": incremental, "incremental_runs_s": increments, "peak_rss_mb": rss_mb, "helper_peak_rss_mb": helper_rss_mb,
        "scrape_p50_ms": percentile(times, 0.5) * 1000, "scrape_p99_ms": percentile(times, 0.99) * 1000,
        "scrape_bytes": size, "series": series,
        "query_scrape_ms": statistics.median(query_times) * 1000,
    }


def table(results: list[dict]) -> str:
    lines = [
        f"| rows | cold ingest (median of {COLD_RUNS}) | runs | rows/s | one process: rows/s | incremental 100k (median) | runs | peak RSS (+ helper) | /metrics p50 | p99 | series | seed SQL per scrape | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['cold_s']:.1f} s | {' / '.join(f'{t:.1f}' for t in r['cold_runs_s'])} s "
            f"| {r['cold_rows_per_s']:,.0f} | {r['cold_single_process_rows_per_s']:,.0f} "
            f"| {r['incremental_100k_s']:.2f} s | {' / '.join(f'{t:.2f}' for t in r['incremental_runs_s'])} s "
            f"| {r['peak_rss_mb']:.0f} MB (+ {r['helper_peak_rss_mb']:.0f} MB) | {r['scrape_p50_ms']:.2f} ms | {r['scrape_p99_ms']:.2f} ms | {r['series']:,} "
            f"| {r['query_scrape_ms']:.0f} ms | {r['query_scrape_ms'] / r['scrape_p50_ms']:,.0f}x |")
    if len(results) >= 2:
        small, big = results[0], results[-1]
        lines.append("")
        lines.append(f"/metrics p50 ratio {big['rows']:,} / {small['rows']:,} rows: "
                     f"{big['scrape_p50_ms'] / small['scrape_p50_ms']:.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--write", action="store_true", help="record the results in benchmarks/RESULTS.md")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--unique-durations", action="store_true",
                        help="API rows with µs durations (their extra_data never repeats)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="exporter-bench-")
    if args.one:
        print(json.dumps(run_size(args.one, workdir, args.unique_durations)))
        return 0
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        command = [sys.executable, __file__, "--one", str(size), "--workdir", workdir]
        out = subprocess.run(command + (["--unique-durations"] if args.unique_durations else []),
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
    text = table(results)
    print(text)
    if args.write:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
        heading = "## Exporter, API rows with unique durations" if args.unique_durations else "## Exporter"
        flag = " --unique-durations" if args.unique_durations else ""
        section = (f"{heading}\n\nCommand: `python benchmarks/exporter.py --sizes {args.sizes}{flag} --write`  \n"
                   f"Machine: {machine}, {time.strftime('%Y-%m-%d')}\n\n{text}\n")
        write_section(os.path.join(ROOT, "benchmarks", "RESULTS.md"), heading, section)
    return 0


def write_section(path: str, heading: str, section: str) -> None:
    """Replace (or append) one ``## `` section of RESULTS.md, leaving the others as they are."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmark results\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + text[end + 1:] if end != -1 else "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
