"""Device types from real User-Agent strings, and the Calibre-Web preset against Calibre-Web's own routes."""

from __future__ import annotations

import glob
import json
import os
import re
import zipfile

import pytest
from flask import Blueprint, Flask
from sqlalchemy import create_engine, text

from exporter.shim import ActivityRecorder, device_type
from exporter.shim.presets import CALIBRE_WEB_EVENT_RULES, get_preset

CASES = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
     "desktop"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.4 Safari/605.1.15", "desktop"),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", "desktop"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", "mobile"),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36", "mobile"),
    ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", "tablet"),
    ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 Chrome/124.0 Safari/537.36", "tablet"),
    ("Mozilla/5.0 (Linux; Android 11; KFTRWI) AppleWebKit/537.36 Silk/124.1 like Chrome/124.0 Safari/537.36",
     "tablet"),
    ("Mozilla/5.0 (Linux; U; Android 2.0; en-us;) AppleWebKit/538.1 (KHTML, like Gecko) Version/4.0 "
     "Mobile Safari/538.1 (Kobo Touch 0373/4.38.21908)", "ereader"),
    ("Mozilla/5.0 (X11; U; Linux armv7l like Android; en-us) AppleWebKit/531.2+ (KHTML, like Gecko) "
     "Version/5.0 Safari/531.2+ Kindle/3.0+", "ereader"),
    ("Mozilla/5.0 (Linux; U; en-US) AppleWebKit/528.5+ (KHTML, like Gecko) PocketBook/631", "ereader"),
    ("KOReader/2024.04 (https://koreader.rocks/) LuaSocket/3.0-rc1", "reader_app"),
    ("Moon+ Reader/8.5 (Android 13)", "reader_app"),
    ("Librera Reader/8.9 Android", "reader_app"),
    ("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Thorium/3.0.0 Chrome/120 Electron/28", "reader_app"),
    ("Panels/2.9 (iPad; iOS 17.4)", "reader_app"),
    ("Chunky/1.4 CFNetwork/1494 Darwin/23.4.0", "reader_app"),
    ("Marvin/3.6 (iPhone; iOS 17.0)", "reader_app"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
    ("curl/8.5.0", "bot"),
    ("python-requests/2.31.0", "bot"),
    ("", "unknown"),
    (None, "unknown"),
    ("MyCustomClient/1.0", "unknown"),
]


@pytest.mark.parametrize("ua,expected", CASES)
def test_device_type(ua, expected):
    assert device_type(ua) == expected


def _calibre_web_routes() -> dict[str, set[str]] | None:
    """endpoint -> url rules, parsed from a downloaded calibreweb wheel (CALIBREWEB_WHEEL or /tmp/**), if any."""
    wheels = [os.environ.get("CALIBREWEB_WHEEL", "")] + glob.glob("/tmp/**/calibreweb-*.whl", recursive=True)
    wheels = [w for w in wheels if w and os.path.exists(w)]
    if not wheels:
        return None
    routes: dict[str, set[str]] = {}
    with zipfile.ZipFile(wheels[0]) as zf:
        for name in zf.namelist():
            if not re.match(r"calibreweb/cps/\w+\.py$", name):
                continue
            source = zf.read(name).decode("utf-8", "replace")
            bp = dict(re.findall(r"^(\w+) = (?:flask\.)?Blueprint\(['\"]([\w-]+)['\"]", source, re.M))
            prefixes = dict(re.findall(r"^(\w+) = (?:flask\.)?Blueprint\([^\n]*url_prefix=['\"]([^'\"]+)['\"]",
                                       source, re.M))
            for block in re.finditer(r"((?:^@\w+\.route\([^\n]*\n(?:^@[^\n]*\n)*)+)^def (\w+)", source, re.M):
                for var, rule in re.findall(r"^@(\w+)\.route\(['\"]([^'\"]*)['\"]", block.group(1), re.M):
                    if var in bp:
                        routes.setdefault(f"{bp[var]}.{block.group(2)}", set()).add(prefixes.get(var, "") + rule)
    return routes


def test_calibre_web_preset_names_real_endpoints():
    routes = _calibre_web_routes()
    if routes is None:
        pytest.skip("no calibreweb wheel: run `pip download --no-deps calibreweb -d /tmp/cw` to check the preset")
    for endpoint, rule in CALIBRE_WEB_EVENT_RULES.items():
        assert endpoint in routes, endpoint
        for field in ("item_id", "format", "shelf"):
            arg = rule.get(field)
            if isinstance(arg, str):
                assert any(f"<{arg}>" in r or f":{arg}>" in r for r in routes[endpoint]), (endpoint, arg)


def test_calibre_web_preset_records_content_events(tmp_path):
    """Blueprints named and routed as in Calibre-Web 0.6.27; the preset turns requests into events."""
    app = Flask(__name__)
    web, shelf, search, opds = (Blueprint(n, n) for n in ("web", "shelf", "search", "opds"))
    web.add_url_rule("/download/<int:book_id>/<book_format>", "download_link", lambda **kw: "file",
                     defaults={"anyname": "None"})
    web.add_url_rule("/read/<int:book_id>/<book_format>", "read_book", lambda **kw: "reader")
    web.add_url_rule("/send/<int:book_id>/<book_format>/<int:convert>", "send_to_ereader", lambda **kw: "[]",
                     methods=["POST"])
    web.add_url_rule("/logout", "logout", lambda: "bye")
    search.add_url_rule("/search", "simple_search", lambda: "results")
    shelf.add_url_rule("/shelf/add/<int:shelf_id>/<int:book_id>", "add_to_shelf", lambda **kw: "", methods=["POST"])
    shelf.add_url_rule("/shelf/remove/<int:shelf_id>/<int:book_id>", "remove_from_shelf", lambda **kw: "",
                       methods=["POST"])
    opds.add_url_rule("/opds/download/<book_id>/<book_format>/", "opds_download_link", lambda **kw: "file")
    for bp in (web, shelf, search, opds):
        app.register_blueprint(bp)
    recorder = ActivityRecorder(str(tmp_path / "cwa.db"), app=app, preset="calibre-web",
                                user_loader=lambda: (7, "reader"))
    c = app.test_client()
    ua = {"User-Agent": "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X)"}
    c.get("/download/11/epub", headers={**ua, "Referer": "http://x/series/stored/4"})
    c.get("/read/12/pdf", headers={**ua, "Referer": "http://x/book/12"})
    c.post("/send/13/mobi/0", headers=ua)
    c.get("/search?query=dune", headers=ua)
    c.get("/search", headers=ua)  # no query: not a search
    c.post("/shelf/add/3/14", headers=ua)
    c.post("/shelf/remove/3/14", headers=ua)
    c.get("/opds/download/15/kepub/", headers={"User-Agent": "KOReader/2024.04"})
    c.get("/logout")
    assert recorder.flush(10)
    recorder.close()
    engine = create_engine(recorder.database_url)
    with engine.connect() as conn:
        rows = [(r.event_type, r.item_id, json.loads(r.extra_data)) for r in conn.execute(text(
            "SELECT event_type, item_id, extra_data FROM cwa_user_activity ORDER BY id"))]
        users = set(conn.execute(text("SELECT DISTINCT user_id, user_name FROM cwa_user_activity")))
    assert users == {(7, "reader")}
    tablet = "tablet"
    assert rows == [
        ("DOWNLOAD", 11, {"format": "EPUB", "source": "series", "device_type": tablet}),
        ("READ", 12, {"format": "PDF", "source": "book_detail", "device_type": tablet}),
        ("EMAIL", 13, {"format": "MOBI", "source": "direct", "device_type": tablet}),
        ("SEARCH", None, {"query": "dune", "device_type": tablet}),
        ("SHELF_ADD", 14, {"shelf": "3", "device_type": tablet}),  # shelf id: cps.ub is not importable here
        ("SHELF_REMOVE", 14, {"shelf": "3", "device_type": tablet}),
        ("OPDS_ACCESS", None, {"endpoint": "/opds/download/<book_id>/<book_format>/", "method": "GET",
                               "status": 200, "duration_ms": rows[6][2]["duration_ms"], "category": "OPDS",
                               "device_type": "reader_app"}),
        ("DOWNLOAD", 15, {"format": "KEPUB", "source": "direct", "device_type": "reader_app"}),
        ("LOGOUT", None, {"device_type": "unknown"}),
    ]


def test_unknown_preset():
    with pytest.raises(ValueError, match="calibre-web"):
        get_preset("wordpress")
