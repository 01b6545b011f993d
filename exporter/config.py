"""Configuration: a YAML file, overridden by ``ACTIVITY_EXPORTER_<KEY>`` environment variables, then by flags.

Every key is declared once in ``SPEC`` with its type, default and check, so validation, the example config and
the docs agree. Any problem raises ``ConfigError`` naming the key; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import time as dtime
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

ENV_PREFIX = "ACTIVITY_EXPORTER_"


class ConfigError(ValueError):
    """Invalid configuration: ``key`` names the setting, ``problem`` says what is wrong with it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config key '{key}': {problem}")
        self.key = key
        self.problem = problem


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from ``15``, ``"15s"``, ``"30m"``, ``"1h"``, ``"7d"``, ``"1w"``, ``"1y"``; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 15s, 30m, 7d; got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like 15s, 30m, 7d; got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"must be positive; got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling in d/h/m/s (``604800`` -> ``7d``), used for ``window`` label values."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- checks: each takes the raw value and returns the parsed one or raises ValueError ------------------------

def _str(v):
    if not isinstance(v, str):
        raise ValueError(f"expected a string; got {type(v).__name__}")
    return v


def _opt_str(v):
    return None if v in (None, "") else _str(v)


def _bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return v.lower() in ("true", "yes", "on", "1")
    raise ValueError(f"expected true or false; got {v!r}")


def _int(minimum: int = 0, maximum: int | None = None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"expected an integer; got {v!r}")
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"expected an integer; got {v!r}") from None
        if n < minimum or (maximum is not None and n > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be {bound}; got {n}")
        return n

    return check


def _choice(*options):
    def check(v):
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {v!r}")
        return v

    return check


def _timezone(v):
    v = _str(v)
    if v == "local":
        return v
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r} (use an IANA name like Europe/Berlin, or UTC)") from None
    return v


def _hhmm(v):
    v = _str(v)
    try:
        dtime.fromisoformat(v if len(v) > 4 else "0" + v)
    except ValueError:
        raise ValueError(f"expected HH:MM; got {v!r}") from None
    if not re.fullmatch(r"\d{1,2}:\d{2}", v):
        raise ValueError(f"expected HH:MM; got {v!r}")
    return v


def _listen(v):
    v = _str(str(v))
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT or :PORT; got {v!r}")
    return v


def _durations(v):
    if isinstance(v, str):
        v = [s for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not v:
        raise ValueError("expected a non-empty list of durations like [1d, 7d, 30d]")
    return sorted({parse_duration(x) for x in v})


def _duration(v):
    return parse_duration(v)


def _rules(v):
    """API category rules: a list of {prefix: /opds, category: OPDS} or {regex: ..., category: ...}."""
    if not isinstance(v, list):
        raise ValueError("expected a list of {prefix|regex, category}")
    out = []
    for i, rule in enumerate(v):
        if not isinstance(rule, dict) or "category" not in rule or not ({"prefix", "regex"} & rule.keys()):
            raise ValueError(f"rule {i}: expected {{prefix: /path, category: Name}} or {{regex: ..., category: ...}}")
        if "regex" in rule:
            try:
                re.compile(rule["regex"])
            except re.error as e:
                raise ValueError(f"rule {i}: bad regex: {e}") from None
        out.append(dict(rule))
    return out


def _regex_list(v):
    if not isinstance(v, list):
        raise ValueError("expected a list of regular expressions")
    for i, pattern in enumerate(v):
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"item {i}: bad regex: {e}") from None
    return list(v)


def _readable_file(v):
    v = _opt_str(v)
    if v is not None and not os.access(v, os.R_OK):
        raise ValueError(f"cannot read {v!r}")
    return v


def _activity_db(v):
    """A URL is taken as given; a file path must be readable if it exists (a missing file is not an error:
    the app may not have written yet, and the exporter reports the database down until it appears)."""
    v = _str(v)
    if "://" not in v and os.path.exists(v) and not os.access(v, os.R_OK):
        raise ValueError(f"cannot read {v!r}")
    if "://" not in v and os.path.isdir(v):
        raise ValueError(f"{v!r} is a folder; give the database file (cwa.db)")
    return v


def _state_file(v):
    v = _opt_str(v)
    if v is not None:
        folder = os.path.dirname(os.path.abspath(v))
        if os.path.isdir(v):
            raise ValueError(f"{v!r} is a folder; give a file name")
        if os.path.isdir(folder) and not os.access(folder, os.W_OK):
            raise ValueError(f"cannot write in {folder!r}")
    return v


def _calibre_library(v):
    v = _opt_str(v)
    if v is None:
        return None
    path = os.path.join(v, "metadata.db") if os.path.isdir(v) else v
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {path!r} (give the library folder or its metadata.db)")
    return path


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    default: Any
    check: Callable[[Any], Any]
    help: str


DEFAULT_CATEGORY_RULES = [
    {"prefix": "/opds", "category": "OPDS"},
    {"prefix": "/kobo", "category": "Kobo Sync"},
    {"prefix": "/api/", "category": "REST API"},
]

SPEC: list[Key] = [
    Key("activity_db", "activity.db", _activity_db, "Activity store: a SQLite path or a SQLAlchemy URL (postgresql+psycopg://...). Opened read-only."),
    Key("calibre_library", None, _calibre_library, "Calibre library folder or its metadata.db (read-only); empty to skip library metrics."),
    Key("listen", ":9712", _listen, "HOST:PORT the exporter serves on."),
    Key("refresh_interval", 15.0, _duration, "How often new rows are folded into the metrics."),
    Key("state", None, _state_file, "File where cursor and aggregates are checkpointed, so a restart resumes; empty = none."),
    Key("checkpoint_interval", 60.0, _duration, "How often the state file is written (also on shutdown and after errors)."),
    Key("chunk_size", 10000, _int(100), "Rows read per query during a refresh (10,000 measured fastest and leanest)."),
    Key("reader_process_min_rows", 50000, _int(0), "A backlog of this many rows or more (cold start, catching up) is read and parsed in a helper process while this one folds; 0 = never (SQLite only)."),
    Key("timezone", "UTC", _timezone, "Time zone for hour-of-day / weekday labels and daily reports."),
    Key("history_timezone", "local", _timezone, "Time zone of CWA's own history tables (cwa_import ...), which store local time."),
    Key("windows", [86400.0, 7 * 86400.0, 30 * 86400.0, 90 * 86400.0, 365 * 86400.0], _durations, "Windows of the distinct-count gauges."),
    Key("user_label", "name", _choice("name", "id", "hash", "none"), "How users appear in the 'user' label."),
    Key("user_cap", 50, _int(1), "At most this many distinct user label values; the rest are 'other'."),
    Key("label_cap", 30, _int(1), "Cap for other client-controlled labels (format, source, device, shelf, category)."),
    Key("endpoint_cap", 200, _int(1), "At most this many endpoint patterns; the rest are 'other'."),
    Key("top_books", 10, _int(1, 1000), "Size of the top-books leaderboard."),
    Key("top_enforced_books", 10, _int(1, 1000), "Size of the top-enforced-books leaderboard."),
    Key("recent_searches", 15, _int(0, 1000), "How many recent searches to expose."),
    Key("recent_searches_enabled", True, _bool, "Expose recent search terms (switch off for privacy)."),
    Key("session_gap", 1800.0, _duration, "Inactivity gap that ends a session."),
    Key("search_success_window", 600.0, _duration, "A search counts as successful if the same user reads/downloads/emails within this time."),
    Key("api_category_rules", DEFAULT_CATEGORY_RULES, _rules, "First matching rule gives the API category; others are 'Web UI'."),
    Key("endpoint_normalization", [], _regex_list, "Extra regexes whose matches in raw paths are replaced by '*'."),
    Key("enable_daily_reports", True, _bool, "Keep daily usage reports (seed 001)."),
    Key("report_start_time", "00:00", _hhmm, "Start of the daily reporting window (HH:MM, in 'timezone')."),
    Key("report_include_errors", False, _bool, "Include failed logins and API 5xx counts in daily reports."),
    Key("report_retention_days", 365, _int(1), "Days of daily reports kept."),
    Key("web_config", None, _readable_file, "Exporter-toolkit web config (TLS, basic auth), like Prometheus' --web.config.file."),
    Key("metrics_auth", False, _bool, "Require web_config's basic auth on /metrics too."),
    Key("log_level", "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level."),
]
SPEC_BY_NAME = {k.name: k for k in SPEC}


@dataclasses.dataclass(frozen=True)
class Config:
    activity_db: str
    calibre_library: str | None
    listen: str
    refresh_interval: float
    state: str | None
    checkpoint_interval: float
    chunk_size: int
    reader_process_min_rows: int
    timezone: str
    history_timezone: str
    windows: list
    user_label: str
    user_cap: int
    label_cap: int
    endpoint_cap: int
    top_books: int
    top_enforced_books: int
    recent_searches: int
    recent_searches_enabled: bool
    session_gap: float
    search_success_window: float
    api_category_rules: list
    endpoint_normalization: list
    enable_daily_reports: bool
    report_start_time: str
    report_include_errors: bool
    report_retention_days: int
    web_config: str | None
    metrics_auth: bool
    log_level: str

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "0.0.0.0", int(port)

    def zone(self) -> ZoneInfo | None:
        """The report/label time zone (None means the machine's local zone)."""
        return None if self.timezone == "local" else ZoneInfo(self.timezone)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _env_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def load(path: str | None = None, overrides: dict | None = None, environ: dict | None = None) -> Config:
    """Merge defaults < YAML file < environment < ``overrides`` (flags), validating every key."""
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError("--config", f"cannot read {path!r}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError("--config", f"{path!r} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("--config", f"{path!r} must hold a mapping of keys to values")
        for key, value in loaded.items():
            if key not in SPEC_BY_NAME:
                raise ConfigError(str(key), f"unknown key in {path}")
            raw[key] = value
    environ = os.environ if environ is None else environ
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].lower()
            if key not in SPEC_BY_NAME:
                raise ConfigError(key, f"unknown key (from environment variable {name})")
            raw[key] = _env_value(value)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    values = {}
    for key in SPEC:
        if key.name not in raw or raw[key.name] is None:
            values[key.name] = key.default
            continue
        try:
            values[key.name] = key.check(raw[key.name])
        except ValueError as e:
            raise ConfigError(key.name, str(e)) from None
    return Config(**values)


def example_yaml() -> str:
    """A commented example config with every key at its default."""
    lines = ["# activity-exporter configuration. Every key can also be set as ACTIVITY_EXPORTER_<KEY>.", ""]
    for key in SPEC:
        lines.append(f"# {key.help}")
        default = key.default
        if key.name in ("windows",):
            default = [format_duration(s) for s in default]
        elif key.name in ("refresh_interval", "checkpoint_interval", "session_gap", "search_success_window"):
            default = format_duration(default)
        dumped = key.name + ": " + yaml.safe_dump(default, default_flow_style=True).replace("\n...", "").strip()
        lines.append(dumped)
        lines.append("")
    return "\n".join(lines)
