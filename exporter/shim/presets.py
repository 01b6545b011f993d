"""Ready-made event rules for known apps, so their operators get content events without editing views.

``CALIBRE_WEB`` comes from Calibre-Web 0.6.27's own routes (``pip download --no-deps calibreweb``):
``cps/web.py``, ``cps/search.py``, ``cps/shelf.py``, ``cps/opds.py``, ``cps/kobo.py``. Endpoint names are
``<blueprint>.<view function>``; field sources are the routes' view args / query parameters:

====================================  ==============================================================  =========
endpoint                              route                                                           event
====================================  ==============================================================  =========
web.download_link                     /download/<int:book_id>/<book_format>[/<anyname>]              DOWNLOAD
opds.opds_download_link               /opds/download/<book_id>/<book_format>/                         DOWNLOAD
kobo.download_book                    /kobo/<auth_token>/download/<book_id>/<book_format>             DOWNLOAD
web.read_book                         /read/<int:book_id>/<book_format>                                READ
web.send_to_ereader                   /send/<int:book_id>/<book_format>/<int:convert> (POST)           EMAIL
search.simple_search                  /search?query=...                                                SEARCH
opds.feed_normal_search               /opds/search?query=...                                           SEARCH
opds.feed_cc_search                   /opds/search/<path:query>                                        SEARCH
shelf.add_to_shelf                    /shelf/add/<int:shelf_id>/<int:book_id> (POST)                   SHELF_ADD
shelf.remove_from_shelf               /shelf/remove/<int:shelf_id>/<int:book_id> (POST)                SHELF_REMOVE
web.logout                            /logout                                                          LOGOUT
====================================  ==============================================================  =========

LOGIN comes from Calibre-Web's vendored Flask-Login fork, signal ``cps.cw_login.user_logged_in`` (sent by
``login_user`` from the login form, remote login, OAuth and Kobo auth). Calibre-Web answers a failed login
with the login page again (HTTP 200), so LOGIN_FAILED cannot be told from the route; it is not in the preset.
``web.send_to_ereader`` answers 200 with a JSON message whether or not the mail was queued; recorded as EMAIL
when the request succeeds. Shelf names and book titles are looked up in Calibre-Web's own databases when
running inside Calibre-Web (``cps.ub``, ``cps.calibre_db``); elsewhere the shelf id is used and the title left
empty.
"""

from __future__ import annotations


def _calibre_web_user():
    """Calibre-Web's current user: the session user, else the OPDS basic-auth user."""
    try:
        from cps.cw_login import current_user  # type: ignore[import-not-found]

        if current_user and getattr(current_user, "is_authenticated", False):
            return current_user._get_current_object()
    except Exception:
        pass
    try:
        from cps.usermanagement import auth  # type: ignore[import-not-found]

        return auth.current_user()
    except Exception:
        return None


def _calibre_web_shelf_name(shelf_id):
    from cps import ub  # type: ignore[import-not-found]

    shelf = ub.session.query(ub.Shelf).filter(ub.Shelf.id == int(shelf_id)).first()
    return shelf.name if shelf is not None else shelf_id


def _calibre_web_title(book_id):
    from cps import calibre_db  # type: ignore[import-not-found]

    book = calibre_db.get_book(int(book_id))
    return book.title if book is not None else None


def _calibre_web_login_signals() -> list:
    try:
        from cps.cw_login import user_logged_in  # type: ignore[import-not-found]
    except Exception:
        return []
    return [user_logged_in]


def _content(event_type, **extra):
    rule = {"event_type": event_type, "item_id": "book_id", "format": "book_format",
            "item_title": _calibre_web_title}
    rule.update(extra)
    return rule


def _shelf(event_type):
    return {"event_type": event_type, "item_id": "book_id", "shelf": "shelf_id",
            "shelf_name": _calibre_web_shelf_name, "item_title": _calibre_web_title}


def _search():
    return {"event_type": "SEARCH", "query": "query", "require": "query"}


CALIBRE_WEB_EVENT_RULES = {
    "web.download_link": _content("DOWNLOAD"),
    "opds.opds_download_link": _content("DOWNLOAD"),
    "kobo.download_book": _content("DOWNLOAD"),
    "web.read_book": _content("READ"),
    "web.send_to_ereader": _content("EMAIL"),
    "search.simple_search": _search(),
    "opds.feed_normal_search": _search(),
    "opds.feed_cc_search": _search(),
    "shelf.add_to_shelf": _shelf("SHELF_ADD"),
    "shelf.remove_from_shelf": _shelf("SHELF_REMOVE"),
    "web.logout": {"event_type": "LOGOUT", "source": False},
}


def calibre_web() -> dict:
    """Options for ``ActivityRecorder(..., preset="calibre-web")`` (signals resolved when called)."""
    return {
        "event_rules": dict(CALIBRE_WEB_EVENT_RULES),
        "user_loader": _calibre_web_user,
        "login_signals": _calibre_web_login_signals(),
    }


PRESETS = {"calibre-web": calibre_web, "calibre-web-automated": calibre_web}


def get_preset(name: str) -> dict:
    try:
        return PRESETS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
