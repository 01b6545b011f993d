"""Admin JSON/CSV endpoints: daily reports (seed 001), multi-section CSV exports and status (seed 000).

Reports come from the ``DailyFolder`` in memory. Exports are on-demand admin downloads, so they run SQL per
request over the activity store (and Calibre's ``metadata.db``); the SQL is plain enough for SQLite and
PostgreSQL, and ``extra_data`` JSON is parsed in Python (the databases' JSON functions differ).

Every route needs credentials (``exporter.webauth``). Input problems answer 400 with
``{"status": "error", "message": ...}``; an unreachable database answers 503; nothing from input gives a 500.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from datetime import date, datetime, time as dtime, timedelta, timezone

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from exporter.aggregate.events import API_EVENT_TYPES, parse_extra
from exporter.endpoints import categorize, normalize_endpoint
from exporter.schema import metadata as schema_metadata
from exporter.webauth import Authenticator, protect

log = logging.getLogger(__name__)

MAX_RANGE_DAYS = 366
MAX_LIMIT = 1000
DEFAULT_EXPORT_DAYS = 30
TOP_N = 10
ENDPOINT_ROWS = 100
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CSV_RISKY = ("=", "+", "-", "@", "\t", "\r")


class BadRequest(Exception):
    """Invalid user input; the message is safe to show."""


def _error(status: int, message: str):
    resp = jsonify({"status": "error", "data": None, "message": message})
    resp.status_code = status
    return resp


def parse_date(value, name: str) -> date:
    if value is None or not isinstance(value, str) or not _DATE.match(value):
        raise BadRequest(f"{name} must be a date as YYYY-MM-DD")
    try:
        d = date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} is not a valid date: {value[:20]!r}") from None
    if d.year < 1970 or d.year > 9998:
        raise BadRequest(f"{name} is out of range")
    return d


def parse_int(value, name: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    if not re.fullmatch(r"\d{1,9}", value or ""):
        raise BadRequest(f"{name} must be an integer between {lo} and {hi}")
    n = int(value)
    if n < lo or n > hi:
        raise BadRequest(f"{name} must be an integer between {lo} and {hi}")
    return n


def parse_format(value) -> str:
    fmt = (value or "json").lower()
    if fmt not in ("json", "csv"):
        raise BadRequest("format must be json or csv")
    return fmt


def safe_cell(value):
    """Strings that a spreadsheet would run as a formula get a leading quote (CSV injection)."""
    if isinstance(value, str) and value.startswith(_CSV_RISKY):
        return "'" + value
    return value


class CsvSections:
    """Seed 000's multi-section CSV: ``=== TITLE ===``, a header row, rows, a blank line."""

    def __init__(self):
        self.buf = io.StringIO()
        self.writer = csv.writer(self.buf, lineterminator="\n")

    def section(self, title: str, header: list, rows) -> None:
        self.buf.write(f"=== {title} ===\n")
        self.writer.writerow(header)
        for row in rows:
            self.writer.writerow([safe_cell(v) for v in row])
        self.buf.write("\n")

    def getvalue(self) -> str:
        return self.buf.getvalue()


def csv_response(body: str, tab: str, now: datetime | None = None) -> Response:
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return Response(body, mimetype="text/csv",
                    headers={"Content-Disposition": f"attachment; filename=cwa_stats_{tab}_{stamp}.csv"})


# -- daily reports ------------------------------------------------------------------------------------------

REPORT_FIELDS = ("date", "user_count", "content_views", "active_users", "peak_usage_time",
                 "average_session_duration", "total_events", "sessions", "failed_logins", "api_5xx")


def report_csv(report: dict) -> str:
    out = CsvSections()
    out.section("DAILY USAGE REPORT", ["Metric", "Value"],
                [[k, report[k]] for k in REPORT_FIELDS if k in report])
    out.section("TOP CONTENT", ["Item ID", "Title", "Count"],
                [[c["item_id"], c["title"] or "", c["count"]] for c in report["top_10_content"]])
    return out.getvalue()


def reports_csv(reports: list) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    fields = [f for f in REPORT_FIELDS if not reports or f in reports[0]]
    buf.write("=== DAILY USAGE REPORTS ===\n")
    writer.writerow(fields)
    for r in reports:
        writer.writerow([r.get(f) for f in fields])
    return buf.getvalue()


# -- export filters -----------------------------------------------------------------------------------------

class Filters:
    """``start``/``end`` (local dates, inclusive; default the last 30 days), or ``days``; ``user`` id or name."""

    def __init__(self, args, zone, today: date):
        if "days" in args and ("start" in args or "end" in args):
            raise BadRequest("give either days or start/end")
        end = parse_date(args["end"], "end") if "end" in args else today
        if "days" in args:
            days = parse_int(args.get("days"), "days", DEFAULT_EXPORT_DAYS, 1, 100 * 366)
            start = end - timedelta(days=days - 1)
        else:
            start = parse_date(args["start"], "start") if "start" in args else end - timedelta(
                days=DEFAULT_EXPORT_DAYS - 1)
        if start > end:
            raise BadRequest("start must not be after end")
        self.start, self.end = start, end
        self.lo = _utc_text(start, zone)
        self.hi = _utc_text(end + timedelta(days=1), zone)
        user = args.get("user")
        if user is not None and (user == "" or len(user) > 200):
            raise BadRequest("user must be a user id or name (1-200 characters)")
        self.user = user

    def where(self, prefix: str = "") -> tuple[str, dict]:
        """SQL condition on the activity table and its parameters."""
        sql = f"{prefix}timestamp >= :lo AND {prefix}timestamp < :hi"
        params = {"lo": self.lo, "hi": self.hi}
        if self.user is not None:
            if self.user.isdigit() and len(self.user) < 10:
                sql += f" AND {prefix}user_id = :uid"
                params["uid"] = int(self.user)
            else:
                sql += f" AND {prefix}user_name = :uname"
                params["uname"] = self.user
        return sql, params


def _utc_text(day: date, zone) -> str:
    naive = datetime.combine(day, dtime(0, 0))
    aware = naive.replace(tzinfo=zone) if zone is not None else naive.astimezone()
    return aware.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# -- exports ------------------------------------------------------------------------------------------------

def _rows(engine, sql: str, params: dict):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).fetchall()


def _guarded(out: CsvSections, title: str, header: list, produce) -> None:
    """Write one section; a query failure becomes an ``error`` row (as seed 000's CSV shows errors)."""
    try:
        rows = list(produce())
    except SQLAlchemyError as e:
        log.warning("export section %s failed: %s", title, e)
        rows = [["error", type(e.__cause__ or e).__name__]]
    out.section(title, header, rows)


def _extra_counts(engine, where: str, params: dict, types: tuple, field_name: str, default: str,
                  transform=str.upper) -> Counter:
    """Counts of one ``extra_data`` field: GROUP BY the raw text in SQL, parse each distinct value in Python."""
    marks = ", ".join(f":t{i}" for i in range(len(types)))
    params = dict(params, **{f"t{i}": t for i, t in enumerate(types)})
    counts: Counter = Counter()
    for raw, n in _rows(engine, f"SELECT extra_data, COUNT(*) FROM cwa_user_activity WHERE {where} "
                                f"AND event_type IN ({marks}) GROUP BY extra_data", params):
        value = parse_extra(raw, []).get(field_name)
        counts[transform(str(value)) if value not in (None, "") else default] += n
    return counts


def export_activity(engine, config, f: Filters) -> str:
    where, p = f.where()
    out = CsvSections()

    def stats():
        r = _rows(engine, f"""SELECT COUNT(*),
                COUNT(DISTINCT user_id),
                SUM(CASE WHEN event_type IN ('DOWNLOAD', 'EMAIL') THEN 1 ELSE 0 END),
                COUNT(DISTINCT CASE WHEN event_type = 'READ' THEN item_id END),
                SUM(CASE WHEN event_type = 'SEARCH' THEN 1 ELSE 0 END),
                SUM(CASE WHEN event_type = 'LOGIN' THEN 1 ELSE 0 END)
            FROM cwa_user_activity WHERE {where}""", p)[0]
        rows = [["period_start", f.start.isoformat()], ["period_end", f.end.isoformat()],
                ["timezone", config.timezone], ["total_events", r[0] or 0]]
        if f.user is not None:
            rows += [["user", f.user], ["total_logins", r[5] or 0]]
        else:
            rows.append(["active_users", r[1] or 0])
        rows += [["downloads", r[2] or 0], ["books_read", r[3] or 0], ["searches", r[4] or 0]]
        return rows

    _guarded(out, "USER ACTIVITY STATISTICS", ["Metric", "Value"], stats)
    _guarded(out, "EVENT TYPES", ["Event Type", "Count"], lambda: _rows(
        engine, f"SELECT event_type, COUNT(*) AS c FROM cwa_user_activity WHERE {where} "
                "GROUP BY event_type ORDER BY c DESC, event_type", p))
    if f.user is None:
        _guarded(out, "TOP USERS", ["User ID", "Username", "Event Count"], lambda: _rows(
            engine, f"SELECT user_id, MAX(user_name), COUNT(*) AS c FROM cwa_user_activity WHERE {where} "
                    f"GROUP BY user_id ORDER BY c DESC, user_id LIMIT {TOP_N}", p))
    else:
        _guarded(out, "MOST ACTIVE DAYS", ["Day (UTC)", "Event Count"], lambda: _rows(
            engine, f"SELECT substr(timestamp, 1, 10) AS d, COUNT(*) AS c FROM cwa_user_activity WHERE {where} "
                    f"GROUP BY substr(timestamp, 1, 10) ORDER BY c DESC, d LIMIT {TOP_N}", p))
    _guarded(out, "DAILY ACTIVITY", ["Day (UTC)", "Event Type", "Count"], lambda: _rows(
        engine, f"SELECT substr(timestamp, 1, 10) AS d, event_type, COUNT(*) FROM cwa_user_activity "
                f"WHERE {where} GROUP BY substr(timestamp, 1, 10), event_type ORDER BY d, event_type", p))
    _guarded(out, "FORMAT DISTRIBUTION", ["Format", "Download Count"], lambda: sorted(
        _extra_counts(engine, where, p, ("DOWNLOAD", "EMAIL"), "format", "UNKNOWN").items(),
        key=lambda kv: (-kv[1], kv[0])))
    _guarded(out, "TOP BOOKS", ["Book ID", "Title", "Count"], lambda: _rows(
        engine, f"SELECT item_id, MAX(item_title), COUNT(*) AS c FROM cwa_user_activity WHERE {where} "
                "AND item_id IS NOT NULL AND event_type IN ('READ', 'DOWNLOAD', 'EMAIL') "
                f"GROUP BY item_id ORDER BY c DESC, item_id LIMIT {TOP_N}", p))
    _guarded(out, "DISCOVERY SOURCES", ["Source", "Count"], lambda: sorted(
        _extra_counts(engine, where, p, ("READ", "DOWNLOAD"), "source", "unknown", str.lower).items(),
        key=lambda kv: (-kv[1], kv[0])))
    _guarded(out, "DEVICE TYPES", ["Device Type", "Count"], lambda: sorted(
        _extra_counts(engine, where, p, ("LOGIN", "READ", "DOWNLOAD", "EMAIL", "SEARCH"), "device_type",
                      "unknown", str.lower).items(), key=lambda kv: (-kv[1], kv[0])))
    if config.recent_searches_enabled and config.recent_searches:
        def searches():
            rows = _rows(engine, f"SELECT timestamp, user_name, extra_data FROM cwa_user_activity WHERE {where} "
                                 f"AND event_type = 'SEARCH' ORDER BY timestamp DESC, id DESC "
                                 f"LIMIT {int(config.recent_searches)}", p)
            for ts, name, raw in rows:
                extra = parse_extra(raw, [])
                yield [ts, name or "", extra.get("query", extra.get("format", ""))]

        _guarded(out, "RECENT SEARCHES", ["Timestamp (UTC)", "Username", "Query"], searches)
    return out.getvalue()


def export_library(engine, library_engine, f: Filters) -> str:
    out = CsvSections()
    hist = "substr(timestamp, 1, 10) >= :ds AND substr(timestamp, 1, 10) <= :de"
    hp = {"ds": f.start.isoformat(), "de": f.end.isoformat()}

    def summary():
        rows = [["period_start", f.start.isoformat()], ["period_end", f.end.isoformat()]]
        if library_engine is not None:
            total = _rows(library_engine, "SELECT COUNT(*) FROM books", {})[0][0]
            formats = _rows(library_engine, "SELECT COUNT(DISTINCT UPPER(format)) FROM data", {})[0][0]
            rated = _rows(library_engine, "SELECT COUNT(*), AVG(r.rating / 2.0) FROM books_ratings_link l "
                                          "JOIN ratings r ON r.id = l.rating WHERE r.rating > 0", {})[0]
            rows += [["total_books", total], ["format_count", formats],
                     ["average_rating_stars", round(rated[1], 2) if rated[1] is not None else ""],
                     ["unrated_books", total - rated[0]]]
        else:
            rows.append(["calibre_library", "not configured"])
        rows.append(["books_added", _rows(engine, f"SELECT COUNT(*) FROM cwa_import WHERE {hist}", hp)[0][0]])
        rows.append(["conversions", _rows(engine, f"SELECT COUNT(*) FROM cwa_conversions WHERE {hist}", hp)[0][0]])
        rows.append(["enforcements", _rows(engine, f"SELECT COUNT(*) FROM cwa_enforcement WHERE {hist}", hp)[0][0]])
        return rows

    _guarded(out, "LIBRARY SUMMARY", ["Metric", "Value"], summary)

    if library_engine is not None:
        def growth():
            before = _rows(library_engine, "SELECT COUNT(*) FROM books WHERE substr(timestamp, 1, 10) < :ds", hp)
            total = before[0][0]
            for day, n in _rows(library_engine, "SELECT substr(timestamp, 1, 10) AS d, COUNT(*) FROM books "
                                                "WHERE substr(timestamp, 1, 10) >= :ds AND substr(timestamp, 1, 10)"
                                                " <= :de GROUP BY substr(timestamp, 1, 10) ORDER BY d", hp):
                total += n
                yield [day, n, total]

        _guarded(out, "LIBRARY GROWTH", ["Date", "Books Added", "Total Books"], growth)
        _guarded(out, "FORMAT DISTRIBUTION", ["Format", "Book Count", "Size Bytes"], lambda: _rows(
            library_engine, "SELECT UPPER(format) AS f, COUNT(DISTINCT book) AS c, SUM(uncompressed_size) "
                            "FROM data GROUP BY UPPER(format) ORDER BY c DESC, f", {}))
        _guarded(out, "SERIES COMPLETION", ["Series", "Book Count", "Highest Index"], lambda: _rows(
            library_engine, "SELECT s.name, COUNT(b.id) AS c, MAX(b.series_index) FROM books_series_link l "
                            "JOIN series s ON s.id = l.series JOIN books b ON b.id = l.book "
                            "GROUP BY s.id, s.name ORDER BY c DESC, s.name", {}))
        _guarded(out, "RATING DISTRIBUTION", ["Stars", "Book Count"], lambda: _rows(
            library_engine, "SELECT r.rating / 2.0 AS stars, COUNT(*) FROM books_ratings_link l "
                            "JOIN ratings r ON r.id = l.rating WHERE r.rating > 0 GROUP BY r.rating "
                            "ORDER BY r.rating", {}))
    else:
        _guarded(out, "LIBRARY GROWTH", ["Date", "Books Added", "Total Imported"], lambda: _import_growth(engine, hp))

    def pipeline():
        counts: Counter = Counter()
        for source, method, filename, n in _rows(
                engine, f"SELECT source, method, filename, COUNT(*) FROM cwa_import WHERE {hist} "
                        "GROUP BY source, method, filename", hp):
            ext = filename.rsplit(".", 1)[-1].upper() if filename and "." in filename else "UNKNOWN"
            counts[(source or "unknown", method or "unknown", ext[:16])] += n
        return [[*k, n] for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    _guarded(out, "IMPORT PIPELINE", ["Source", "Method", "Format", "Count"], pipeline)
    _guarded(out, "TOP ENFORCED BOOKS", ["Book ID", "Title", "Enforcement Count", "Last Enforced"], lambda: _rows(
        engine, f"SELECT book_id, MAX(book_title), COUNT(*) AS c, MAX(timestamp) FROM cwa_enforcement "
                f"WHERE {hist} GROUP BY book_id ORDER BY c DESC, book_id LIMIT {TOP_N}", hp))
    return out.getvalue()


def _import_growth(engine, hp):
    total = _rows(engine, "SELECT COUNT(*) FROM cwa_import WHERE substr(timestamp, 1, 10) < :ds", hp)[0][0]
    for day, n in _rows(engine, "SELECT substr(timestamp, 1, 10) AS d, COUNT(*) FROM cwa_import WHERE "
                                "substr(timestamp, 1, 10) >= :ds AND substr(timestamp, 1, 10) <= :de "
                                "GROUP BY substr(timestamp, 1, 10) ORDER BY d", hp):
        total += n
        yield [day, n, total]


def export_api(engine, config, f: Filters) -> str:
    where, p = f.where()
    marks = ", ".join(f":t{i}" for i in range(len(API_EVENT_TYPES)))
    p = dict(p, **{f"t{i}": t for i, t in enumerate(sorted(API_EVENT_TYPES))})
    out = CsvSections()
    categories: Counter = Counter()
    endpoints: Counter = Counter()
    methods: Counter = Counter()
    statuses: Counter = Counter()
    known = {r["category"] for r in config.api_category_rules} | {"Web UI"}
    type_category = {"OPDS_ACCESS": "OPDS", "KOBO_SYNC": "Kobo Sync", "API_CALL": "REST API"}
    extra_patterns = tuple(config.endpoint_normalization)
    failed = None
    try:
        for etype, raw, n in _rows(engine, f"SELECT event_type, extra_data, COUNT(*) FROM cwa_user_activity "
                                           f"WHERE {where} AND event_type IN ({marks}) "
                                           "GROUP BY event_type, extra_data", p):
            extra = parse_extra(raw, [])
            raw_ep = extra.get("endpoint") or extra.get("path")
            pattern = normalize_endpoint(str(raw_ep), extra_patterns) if raw_ep else "unknown"
            category = extra.get("category")
            if category not in known:
                category = categorize(pattern, config.api_category_rules) if raw_ep else type_category.get(etype)
                category = category if category in known else "Web UI"
            categories[category] += n
            endpoints[(pattern, category)] += n
            methods[str(extra.get("method") or "unknown").upper()[:16]] += n
            statuses[str(extra.get("status", extra.get("status_code", "unknown")))[:16]] += n
    except SQLAlchemyError as e:
        log.warning("api export failed: %s", e)
        failed = [["error", type(e.__cause__ or e).__name__]]
    total = sum(categories.values())

    def pct(n):
        return f"{100.0 * n / total:.2f}" if total else "0.00"

    if failed:
        out.section("API USAGE SUMMARY", ["Metric", "Value"], failed)
        return out.getvalue()
    out.section("API USAGE SUMMARY", ["Metric", "Value"],
                [["period_start", f.start.isoformat()], ["period_end", f.end.isoformat()],
                 ["total_requests", total], ["endpoint_patterns", len(endpoints)]])
    out.section("USAGE BY CATEGORY", ["Category", "Count", "Percent"],
                [[c, n, pct(n)] for c, n in sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))])
    out.section("ENDPOINT FREQUENCY", ["Endpoint", "Category", "Count", "Percent"],
                [[e, c, n, pct(n)] for (e, c), n in sorted(endpoints.items(), key=lambda kv: (-kv[1], kv[0]))
                 [:ENDPOINT_ROWS]])
    out.section("METHODS", ["Method", "Count"], sorted(methods.items(), key=lambda kv: (-kv[1], kv[0])))
    out.section("STATUS CODES", ["Status", "Count"], sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0])))
    return out.getvalue()


def table_counts(engine) -> dict:
    """Row counts of the known tables; None for a table that does not exist (or cannot be read)."""
    counts = {}
    for name in schema_metadata.tables:
        try:
            with engine.connect() as conn:
                counts[name] = conn.execute(text(f"SELECT COUNT(*) FROM {name}")).scalar()
        except SQLAlchemyError:
            counts[name] = None
    return counts


# -- blueprint ----------------------------------------------------------------------------------------------

def make_blueprint(context) -> Blueprint:
    """The admin API. ``context``: ``config``, ``engine()``, ``daily``, ``library_engine()``, ``status()``,
    and optionally ``auth`` (an ``Authenticator``; built from ``config.web_config`` when absent)."""
    config = context.config
    zone = config.zone()
    bp = Blueprint("reports_api", __name__)
    auth = getattr(context, "auth", None) or Authenticator.from_config(config)
    protect(bp, auth)

    @bp.errorhandler(BadRequest)
    def _bad(e):
        return _error(400, str(e))

    @bp.errorhandler(SQLAlchemyError)
    def _db(e):
        log.warning("database error in %s: %s", request.path, e)
        return _error(503, "database unavailable")

    def today() -> date:
        return datetime.now(zone).date() if zone is not None else datetime.now().date()

    def daily_or_404():
        if context.daily is None:
            return None, _error(404, "daily reports are disabled (enable_daily_reports: false)")
        return context.daily, None

    @bp.get("/api/reports/daily/<day>")
    def daily_report(day):
        d = parse_date(day, "date")
        fmt = parse_format(request.args.get("format"))
        limit = parse_int(request.args.get("limit"), "limit", TOP_N, 1, MAX_LIMIT)
        offset = parse_int(request.args.get("offset"), "offset", 0, 0, 10_000_000)
        daily, err = daily_or_404()
        if err:
            return err
        report = daily.report(d, limit=limit, offset=offset)
        if report is None:
            return _error(404, f"no report for {d.isoformat()} (no activity, or older than the retention)")
        if fmt == "csv":
            return csv_response(report_csv(report), f"daily_{d.strftime('%Y%m%d')}")
        return jsonify({"status": "success", "data": report, "message": None})

    @bp.get("/api/reports/daily")
    def daily_range():
        args = request.args
        fmt = parse_format(args.get("format"))
        if "date" in args:
            start = end = parse_date(args.get("date"), "date")
        else:
            end = parse_date(args.get("end"), "end") if "end" in args else today() - timedelta(days=1)
            start = parse_date(args.get("start"), "start") if "start" in args else end - timedelta(days=6)
        if start > end:
            raise BadRequest("start must not be after end")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise BadRequest(f"a range covers at most {MAX_RANGE_DAYS} days")
        limit = parse_int(args.get("limit"), "limit", TOP_N, 1, MAX_LIMIT)
        daily, err = daily_or_404()
        if err:
            return err
        reports = [r for r in (daily.report(d, limit=limit) for d in daily.days() if start <= d <= end)]
        if fmt == "csv":
            return csv_response(reports_csv(reports), "daily")
        return jsonify({"status": "success", "data": reports, "message": None,
                        "start": start.isoformat(), "end": end.isoformat()})

    @bp.get("/api/export/<tab>.csv")
    def export(tab):
        if tab not in ("activity", "library", "api"):
            return _error(404, "unknown export; use activity.csv, library.csv or api.csv")
        f = Filters(request.args, zone, today())
        engine = context.engine()
        if tab == "activity":
            body = export_activity(engine, config, f)
        elif tab == "library":
            body = export_library(engine, context.library_engine(), f)
        else:
            body = export_api(engine, config, f)
        return csv_response(body, tab)

    @bp.get("/api/status")
    def status():
        data = dict(context.status() or {})
        data["tables"] = table_counts(context.engine())
        daily = context.daily
        if daily is not None:
            days = daily.days()
            data["daily_reports"] = {"enabled": True, "days": len(days),
                                     "first": days[0].isoformat() if days else None,
                                     "last": days[-1].isoformat() if days else None,
                                     "report_start_time": config.report_start_time, "timezone": config.timezone}
        else:
            data["daily_reports"] = {"enabled": False}
        data["library_configured"] = config.calibre_library is not None
        return Response(json.dumps({"status": "success", "data": data, "message": None}, default=str),
                        mimetype="application/json")

    return bp
