"""Flask extension: records API requests and content events from routes, without touching the app's views.

Installed by ``ActivityRecorder.init_app(app, **options)`` (or ``ActivityRecorder(url, app=app)``):

- **API tracking**: a request whose path matches an ``api_rules`` entry becomes one ``OPDS_ACCESS`` /
  ``KOBO_SYNC`` / ``API_CALL`` event with ``endpoint`` = the Flask url rule (never the raw path, so ids and
  tokens do not end up in labels), ``method``, ``status``, ``duration_ms`` (before_request to after_request,
  around the real handler) and ``category``. ``record_web_ui=True`` also records the other paths, category
  ``Web UI``. Static files and ``skip_paths`` are never recorded.
- **Event rules**: ``event_rules`` maps Flask endpoint names (``"web.download_link"``) to an event type and
  where its fields come from (view args, query string, form). Recorded only for successful responses
  (status < 400): seed 000 says log completed operations only.
- **LOGIN**: from Flask-Login's ``user_logged_in`` signal (and any ``login_signals`` given, e.g. Calibre-Web's
  own ``cps.cw_login.user_logged_in``).
- **Current user**: ``user_loader()`` returning ``(id, name)``, an object with ``id`` and ``name``/``username``,
  or None. Default: Flask-Login's ``current_user`` when installed and authenticated.

Tracking code never raises into the request: any failure is logged at debug level and the response is
returned untouched.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from flask import g, request

from exporter.endpoints import categorize, normalize_endpoint

log = logging.getLogger("exporter.shim")

DEFAULT_API_RULES = [
    {"prefix": "/opds", "category": "OPDS", "event_type": "OPDS_ACCESS"},
    {"prefix": "/kobo/", "category": "Kobo Sync", "event_type": "KOBO_SYNC"},
    {"prefix": "/api/", "category": "REST API", "event_type": "API_CALL"},
]
WEB_UI = {"category": "Web UI", "event_type": "API_CALL"}
DEFAULT_SKIP_PATHS = ("/static/", "/metrics", "/healthz", "/favicon.ico")

# Discovery source from the page the user came from (seed 000: search, book_detail, series, author, category,
# shelf, direct). Checked in order against the Referer's path and query.
DEFAULT_SOURCE_RULES = [
    ("search", ("/search", "query=", "/advsearch")),
    ("book_detail", ("/book/",)),
    ("series", ("/series",)),
    ("author", ("/author",)),
    ("category", ("/category", "/tag", "/genre")),
    ("shelf", ("/shelf",)),
]

_OPTIONS = {"api_rules", "record_web_ui", "skip_paths", "event_rules", "user_loader", "login_signals",
            "source_rules", "preset"}


class FlaskActivity:
    """The per-app state of the extension (kept in ``app.extensions["activity_exporter"]``)."""

    def __init__(self, recorder, app, **options):
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TypeError(f"unknown ActivityRecorder option(s): {', '.join(sorted(unknown))}")
        preset = options.pop("preset", None)
        if isinstance(preset, str):
            from exporter.shim.presets import get_preset

            preset = get_preset(preset)
        merged = dict(preset or {})
        merged.update({k: v for k, v in options.items() if v is not None})
        self.recorder = recorder
        self.app = app
        self.api_rules = list(merged.get("api_rules") or DEFAULT_API_RULES)
        self.record_web_ui = bool(merged.get("record_web_ui", False))
        self.skip_paths = tuple(merged.get("skip_paths") or DEFAULT_SKIP_PATHS)
        self.event_rules = dict(merged.get("event_rules") or {})
        self.user_loader = merged.get("user_loader") or default_user_loader
        self.source_rules = list(merged.get("source_rules") or DEFAULT_SOURCE_RULES)
        app.before_request(self._before)
        app.after_request(self._after)
        app.extensions["activity_exporter"] = self
        self._signals = []
        for signal in list(merged.get("login_signals") or []) + _flask_login_signals():
            if signal is None or signal in self._signals:
                continue
            signal.connect(self._on_login, sender=app, weak=False)
            self._signals.append(signal)

    # ------------------------------------------------------------------ request hooks

    def _before(self):
        g._activity_t0 = time.perf_counter()
        if request.endpoint in self.event_rules:
            # LOGOUT and friends: the user is gone after the handler ran.
            g._activity_user_before = self._current_user()

    def _after(self, response):
        try:
            self._record(response)
        except Exception:
            log.debug("activity tracking failed", exc_info=True)
        return response

    def _record(self, response):
        path = request.path
        if path.startswith(self.skip_paths) or request.endpoint == "static" or (
                request.endpoint or "").endswith(".static"):
            return
        t0 = getattr(g, "_activity_t0", None)
        # Whole milliseconds: finer digits would make every request's extra_data a text of its own, which the
        # exporter then parses row by row (measured: half the ingest rate); the histogram starts at 5 ms.
        duration_ms = round((time.perf_counter() - t0) * 1000.0) if t0 is not None else None
        user = None
        rule = self._api_rule(path)
        if rule is not None:
            user = self._current_user()
            url_rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
            extra = {
                "endpoint": normalize_endpoint(url_rule),
                "method": request.method,
                "status": int(response.status_code),
                "duration_ms": duration_ms,
                "category": rule["category"],
            }
            self.recorder.log_activity(user[0], user[1], rule.get("event_type", "API_CALL"), extra_data=extra)
        spec = self.event_rules.get(request.endpoint)
        if spec is not None and response.status_code < 400:
            if user is None:
                user = self._current_user()
            if user[0] is None and user[1] is None:
                user = getattr(g, "_activity_user_before", None) or user
            self._record_event(spec, user)

    def _api_rule(self, path):
        category = categorize(path, self.api_rules, default="")
        if category:
            for rule in self.api_rules:
                if rule["category"] == category:
                    return rule
        return WEB_UI if self.record_web_ui else None

    def _record_event(self, spec: dict, user):
        values = request.view_args or {}

        def pick(name):
            source = spec.get(name)
            if source is None:
                return None
            if callable(source):
                return source(values)
            for where in (values, request.args, request.form if request.method == "POST" else {}):
                if source in where and where[source] not in (None, ""):
                    return where[source]
            return None

        event_type = spec["event_type"]
        if callable(event_type):
            event_type = event_type(values)
        if spec.get("require") and not pick(spec["require"]):
            return  # e.g. a search page opened without a query
        item_id = pick("item_id")
        extra = {}
        fmt = pick("format")
        if fmt is not None:
            extra["format"] = str(fmt).upper()
        query = pick("query")
        if query is not None:
            extra["query"] = str(query).strip()
        shelf = pick("shelf")
        if shelf is not None:
            resolver = spec.get("shelf_name")
            extra["shelf"] = str(_safe_call(resolver, shelf, shelf) if resolver else shelf)
        if spec.get("source", True) and event_type in ("READ", "DOWNLOAD", "EMAIL"):
            extra["source"] = self.discovery_source(request.headers.get("Referer"))
        for key, value in (spec.get("extra") or {}).items():
            extra[key] = value
        title = None
        resolver = spec.get("item_title")
        if resolver is not None and item_id is not None:
            title = _safe_call(resolver, item_id, None)
        self.recorder.log_activity(user[0], user[1], event_type, item_id=item_id, item_title=title,
                                   extra_data=extra)

    def discovery_source(self, referer: str | None) -> str:
        """How the user found the book, from the Referer (no Referer: ``direct``; unknown page: ``other``)."""
        if not referer:
            return "direct"
        parts = urlsplit(referer)
        where = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        for source, needles in self.source_rules:
            if any(n in where for n in needles):
                return source
        return "other"

    # ------------------------------------------------------------------ users and login

    def _current_user(self):
        return _user_tuple(_safe_call(self.user_loader, None, None, no_arg=True))

    def _on_login(self, sender, user=None, **_):
        try:
            uid, name = _user_tuple(user)
            self.recorder.log_activity(uid, name, "LOGIN")
        except Exception:
            log.debug("activity LOGIN tracking failed", exc_info=True)


def _user_tuple(user):
    """``(id, name)`` from a tuple, a user object (id + name/username) or None; anonymous users give Nones."""
    if user is None:
        return (None, None)
    if isinstance(user, tuple):
        return (user + (None, None))[:2]
    if getattr(user, "is_anonymous", False) is True or getattr(user, "is_authenticated", True) is False:
        return (None, None)
    uid = getattr(user, "id", None)
    if uid is None and hasattr(user, "get_id"):
        uid = _safe_call(user.get_id, None, None, no_arg=True)
    name = getattr(user, "name", None) or getattr(user, "username", None)
    return (uid, name)


def default_user_loader():
    """Flask-Login's ``current_user`` when Flask-Login is installed, else nobody."""
    try:
        from flask_login import current_user
    except ImportError:
        return None
    return current_user._get_current_object() if current_user else None


def _flask_login_signals() -> list:
    try:
        from flask_login import user_logged_in
    except ImportError:
        return []
    return [user_logged_in]


def _safe_call(func, arg, default, no_arg=False):
    try:
        return func() if no_arg else func(arg)
    except Exception:
        log.debug("activity resolver failed", exc_info=True)
        return default
