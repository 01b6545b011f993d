"""Device type from a User-Agent string: seed 000's rule made right.

Seed 000 calls anything with "android" mobile and checks tablets second, so iPads and Android tablets count as
phones and every e-reader or OPDS app counts as a desktop. Here the specific families are tested first
(reader apps, bots, e-readers, tablets) and the generic ones last. Results are cached: a library sees few
distinct User-Agents, and the writer thread classifies every event.
"""

from __future__ import annotations

from functools import lru_cache

DEVICE_TYPES = ("desktop", "mobile", "tablet", "ereader", "reader_app", "bot", "unknown")

# OPDS / e-book reader applications (checked first: they run on phones, tablets and e-readers alike).
READER_APPS = (
    "koreader", "moon+ reader", "moonreader", "moon+reader", "librera", "thorium", "panels/", "panels ",
    "chunky", "marvin", "aldiko", "fbreader", "kybook", "cantook", "readest", "foliate", "calibre companion",
    "pocketbook reader", "readera", "lithium", "yomu", "kavita", "bookfusion", "simple ebook reader",
)
BOTS = (
    "bot", "crawl", "spider", "slurp", "curl/", "wget/", "python-requests", "python-urllib", "python-httpx",
    "aiohttp", "go-http-client", "libwww-perl", "httpie", "headlesschrome", "phantomjs", "scrapy",
    "facebookexternalhit", "okhttp/", "java/", "apache-httpclient", "node-fetch", "axios/", "uptime",
    "monitor", "prometheus", "check_http", "feedfetcher", "feedparser",
)
# Amazon's Fire tablets say "Silk" or "KF..."; they are tablets, not Kindle e-readers.
TABLET_FIRST = ("silk/", "kfapwi", "kftt", "kfot", "kfthwi", "kfjwi", "kfsowi", "kfmewi", "kffowi", "kfauwi")
EREADERS = (
    "kobo", "kindle", "pocketbook", "tolino", "boox", "onyx", "remarkable", "nook", "inkpad", "bookeen",
    "cybook", "sony prs", "hisense a5", "likebook", "meebook", "e-ink", "eink",
)
TABLETS = ("ipad", "tablet", "playbook", "nexus 7", "nexus 9", "nexus 10", "sm-t", "sm-x", "gt-p", "kindle fire",
           "lenovo tab", "mi pad", "xiaomi pad", "mipad", "galaxy tab", "surface")
MOBILES = ("iphone", "ipod", "mobile", "windows phone", "blackberry", "bb10", "opera mini", "iemobile",
           "palm", "symbian", "nokia", "webos", "fennec")
DESKTOPS = ("windows nt", "macintosh", "mac os x", "x11", "linux", "cros", "freebsd", "openbsd", "windows")


def _has(ua: str, needles) -> bool:
    return any(n in ua for n in needles)


@lru_cache(maxsize=4096)
def device_type(user_agent: str | None) -> str:
    """One of ``DEVICE_TYPES`` for a User-Agent header value (None or empty: ``unknown``)."""
    if not user_agent:
        return "unknown"
    ua = str(user_agent)[:512].lower()
    if _has(ua, READER_APPS):
        return "reader_app"
    if _has(ua, BOTS):
        return "bot"
    if _has(ua, TABLET_FIRST):
        return "tablet"
    if _has(ua, EREADERS):
        return "ereader"
    if _has(ua, TABLETS):
        return "tablet"
    if "android" in ua:
        # Android phones send "Mobile"; Android tablets do not.
        return "mobile" if "mobile" in ua else "tablet"
    if _has(ua, MOBILES):
        return "mobile"
    if _has(ua, DESKTOPS) or ua.startswith("mozilla/"):
        return "desktop"
    return "unknown"
