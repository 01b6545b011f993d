"""The exporter's web app: /metrics serves the refresher's pre-rendered snapshot; nothing here queries events.

Served by cheroot (a production, threaded WSGI server with built-in TLS), never Flask's development server.
"""

from __future__ import annotations

import html
import logging
import time

from flask import Flask, Response, jsonify, request
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE

from exporter import __version__, db
from exporter.config import Config

log = logging.getLogger("exporter.web")
#: /healthz fails when the last successful refresh is older than this many intervals.
STALE_INTERVALS = 3


def wants_openmetrics(accept: str) -> bool:
    return any(part.split(";")[0].strip() == "application/openmetrics-text" for part in (accept or "").split(","))


class WebContext:
    """What the report and export endpoints need from the running exporter."""

    def __init__(self, config: Config, refresher, auth=None):
        self.config = config
        self.refresher = refresher
        self.auth = auth
        self.daily = getattr(refresher, "daily", None)
        self._library_engine = None

    def engine(self):
        return self.refresher.engine

    def library_engine(self):
        if not self.config.calibre_library:
            return None
        if self._library_engine is None:
            self._library_engine = db.reader_engine(self.config.calibre_library)
        return self._library_engine

    def status(self) -> dict:
        return self.refresher.status()


def create_app(config: Config, refresher, web_config=None) -> Flask:
    """``web_config``: the parsed exporter-toolkit web config (users for basic auth); None reads
    ``config.web_config``. Report, export and status endpoints always need credentials; /metrics when
    ``metrics_auth`` is set."""
    from exporter.reports_api import make_blueprint
    from exporter.webauth import Authenticator, load_web_config, protect

    web_config = web_config if web_config is not None else load_web_config(config.web_config)
    auth = Authenticator(web_config.users)
    app = Flask("exporter")
    app.json.sort_keys = False

    def health():
        snap = refresher.snapshot
        now = time.time()
        limit = max(STALE_INTERVALS * config.refresh_interval, 30.0)
        if snap.last_success is None:
            return False, "no successful refresh yet" + (f": {snap.error}" if snap.error else "")
        if now - snap.last_success > limit:
            return False, f"last successful refresh {now - snap.last_success:.0f}s ago" + (
                f": {snap.error}" if snap.error else "")
        return True, "ok"

    @app.get("/metrics")
    def metrics():
        snap = refresher.snapshot
        if wants_openmetrics(request.headers.get("Accept", "")):
            return Response(snap.openmetrics, content_type=OPENMETRICS_CONTENT_TYPE)
        if "gzip" in request.headers.get("Accept-Encoding", "") and snap.text_gzip:
            return Response(snap.text_gzip, content_type=CONTENT_TYPE_PLAIN_0_0_4, headers={"Content-Encoding": "gzip"})
        return Response(snap.text, content_type=CONTENT_TYPE_PLAIN_0_0_4)

    @app.get("/healthz")
    def healthz():
        ok, reason = health()
        body = {"status": "ok" if ok else "unhealthy", "reason": reason, "database_up": refresher.snapshot.database_up}
        return jsonify(body), 200 if ok else 503

    @app.get("/")
    def index():
        snap = refresher.snapshot
        ok, reason = health()
        last = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snap.last_success)) if snap.last_success else "never"
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>activity-exporter</title></head>
<body><h1>activity-exporter {html.escape(__version__)}</h1>
<p>Last successful refresh: {html.escape(last)} &middot; health: {html.escape(reason)}</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="api/status">/api/status</a> (needs credentials)</li></ul></body></html>"""
        return Response(page, content_type="text/html; charset=utf-8")

    @app.errorhandler(404)
    def not_found(_e):
        return jsonify({"status": "error", "message": "not found", "data": None}), 404

    @app.errorhandler(405)
    def not_allowed(_e):
        return jsonify({"status": "error", "message": "method not allowed", "data": None}), 405

    app.register_blueprint(make_blueprint(WebContext(config, refresher, auth)))
    if config.metrics_auth:
        protect(app, auth, paths={"/metrics"})
    return app


def serve(app: Flask, config: Config, ssl_adapter=None, ready=None):
    """Run the app under cheroot until interrupted. ``ready`` (a callable) is told the bound server."""
    from cheroot import wsgi

    host, port = config.listen_host_port
    server = wsgi.Server((host, port), app, numthreads=8, server_name="activity-exporter")
    if ssl_adapter is not None:
        server.ssl_adapter = ssl_adapter
    server.prepare()
    log.info("listening on %s:%d", host, server.bind_addr[1] if isinstance(server.bind_addr, tuple) else port)
    if ready is not None:
        ready(server)
    try:
        server.serve()
    finally:
        server.stop()
