"""Subcommands ``report``, ``backfill``, ``prune``, ``anonymize`` for the main CLI.

The main CLI loads the config and calls ``args.handler(args, config)``; each handler returns an exit code.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date

from exporter.config import parse_duration

EXIT_INPUT = 2


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("report", help="Print the daily usage report of one day (read from the database).")
    p.add_argument("--date", help="report day YYYY-MM-DD (default: the last complete day)")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--limit", type=int, default=10, help="top content entries (default 10)")
    p.set_defaults(handler=cmd_report)

    p = subparsers.add_parser("backfill", help="Write the history of the counters as OpenMetrics for "
                                               "'promtool tsdb create-blocks-from openmetrics'.")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--step", default="1h", help="sample spacing (default 1h)")
    p.add_argument("--end", help="last sample time, YYYY-MM-DD[THH:MM[:SS]] UTC (default now; set it to when the "
                                 "exporter was first scraped to avoid overlap)")
    p.add_argument("--start", help="first sample time (values stay cumulative over all history)")
    p.add_argument("--label", action="append", default=[], metavar="NAME=VALUE",
                   help="label added to every series, e.g. job=activity-exporter (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=cmd_backfill)

    p = subparsers.add_parser("prune", help="Delete raw events older than a limit, in small batches.")
    p.add_argument("--older-than", required=True, help="age limit, e.g. 365d")
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--yes", action="store_true", help="really delete (without it: only show what would change)")
    p.set_defaults(handler=cmd_prune)

    p = subparsers.add_parser("anonymize", help="Replace user names by User<id> and drop username_attempted/ip "
                                                "from extra_data for events before a date.")
    p.add_argument("--before", required=True, help="YYYY-MM-DD (UTC); events before it are anonymised")
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--yes", action="store_true", help="really change (without it: only show what would change)")
    p.set_defaults(handler=cmd_anonymize)


def _err(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_INPUT


def _parse_time(value: str) -> float:
    from datetime import datetime, timezone

    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def build_daily(config, now: float | None = None):
    """A ``DailyFolder`` filled by reading every stored event (offline ``report``)."""
    from exporter.aggregate.daily import DailyFolder
    from exporter.aggregate.health import Health
    from exporter.backfill import read_events
    from exporter.db import reader_engine

    health = Health()
    folder = DailyFolder(config, health)
    engine = reader_engine(config.activity_db)
    try:
        for event in read_events(engine, config.chunk_size, health):
            folder.fold(event)
    finally:
        engine.dispose()
    folder.advance(time.time() if now is None else now)
    return folder


def cmd_report(args, config) -> int:
    from exporter.reports_api import report_csv

    if args.limit < 1 or args.limit > 1000:
        return _err("--limit must be between 1 and 1000")
    try:
        day = date.fromisoformat(args.date) if args.date else None
    except ValueError:
        return _err(f"--date must be YYYY-MM-DD; got {args.date!r}")
    folder = build_daily(config)
    day = day or folder.last_complete_day(time.time())
    report = folder.report(day, limit=args.limit)
    if report is None:
        print(f"no activity on {day.isoformat()} (or older than report_retention_days)", file=sys.stderr)
        return 1
    if args.format == "csv":
        sys.stdout.write(report_csv(report))
    else:
        print(json.dumps({"status": "success", "data": report, "message": None}, indent=2))
    return 0


def cmd_backfill(args, config) -> int:
    from exporter.backfill import write_openmetrics

    try:
        step = parse_duration(args.step)
        end = _parse_time(args.end) if args.end else None
        start = _parse_time(args.start) if args.start else None
    except ValueError as e:
        return _err(str(e))
    labels = {}
    for item in args.label:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            return _err(f"--label must be NAME=VALUE; got {item!r}")
        labels[name] = value

    def progress(done, total):
        if not args.quiet:
            print(f"\rbackfill: {done}/{total} rows", end="", file=sys.stderr, flush=True)

    summary = write_openmetrics(config, args.out, step, progress=progress, end=end, start=start,
                                extra_labels=labels)
    if not args.quiet:
        print(file=sys.stderr)
    print(f"backfill: wrote {summary['samples']} samples of {summary['series']} series to {args.out}. Next:\n"
          f"  promtool tsdb create-blocks-from openmetrics --max-block-duration=24h {args.out} ./blocks\n"
          f"  then move ./blocks/* into Prometheus' --storage.tsdb.path directory.")
    return 0


def cmd_prune(args, config) -> int:
    from exporter.ops import prune

    try:
        seconds = parse_duration(args.older_than)
    except ValueError as e:
        return _err(f"--older-than: {e}")
    if args.batch_size < 1:
        return _err("--batch-size must be positive")
    try:
        prune(config, seconds, confirm=args.yes, batch_size=args.batch_size)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_anonymize(args, config) -> int:
    from exporter.ops import anonymize

    try:
        before = date.fromisoformat(args.before)
    except ValueError:
        return _err(f"--before must be YYYY-MM-DD; got {args.before!r}")
    if args.batch_size < 1:
        return _err("--batch-size must be positive")
    try:
        anonymize(config, before, confirm=args.yes, batch_size=args.batch_size)
    except KeyboardInterrupt:
        return 130
    return 0
