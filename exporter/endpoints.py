"""Endpoint patterns and API categories, shared by the shim (when recording) and the exporter (when reading).

Raw paths carry ids, UUIDs and tokens (``/kobo/3f9c.../v1/library/9b1e.../state``); as labels they would grow
without bound, so they are normalised to patterns (``/kobo/*/v1/library/*/state``). Flask url rules
(``/kobo/<auth_token>/...``) are already patterns and are kept as they are.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Order matters: whole segments only, so '/api/v1' keeps its 'v1'.
_DEFAULT_SEGMENT_PATTERNS = [
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",  # UUID
    r"\d+(?:\.\d+)?",  # numbers and ids
    r"[0-9a-fA-F]{16,}",  # hex tokens and hashes
    r"[A-Za-z0-9_\-]{24,}",  # long opaque tokens (base64/url-safe)
    r"(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{12,}",  # mixed letters+digits, 12+
]
MAX_ENDPOINT_LENGTH = 200


@lru_cache(maxsize=32)
def _compile(extra: tuple[str, ...]) -> re.Pattern:
    return re.compile("^(?:" + "|".join(list(extra) + _DEFAULT_SEGMENT_PATTERNS) + ")$")


def normalize_endpoint(path: str | None, extra_patterns: tuple[str, ...] = ()) -> str:
    """Turn a raw request path into a bounded pattern: variable segments become ``*``.

    A Flask url rule (containing ``<...>``) is returned unchanged apart from the query string and length cap.
    ``extra_patterns`` are whole-segment regexes added to the defaults (config ``endpoint_normalization``).
    """
    if not path:
        return "unknown"
    path = str(path).split("?", 1)[0].split("#", 1)[0]
    if "<" in path:
        return path[:MAX_ENDPOINT_LENGTH]
    segment_re = _compile(tuple(extra_patterns))
    parts = [("*" if part and segment_re.match(part) else part) for part in path.split("/")]
    normalized = "/".join(parts)
    if not normalized.startswith("/"):
        normalized = "/" + normalized
    return normalized[:MAX_ENDPOINT_LENGTH]


def categorize(endpoint: str | None, rules: list[dict], default: str = "Web UI") -> str:
    """The category of the first matching rule (``prefix`` or ``regex``), else ``default``."""
    endpoint = endpoint or ""
    for rule in rules:
        prefix = rule.get("prefix")
        if prefix is not None and endpoint.startswith(prefix):
            return rule["category"]
        regex = rule.get("regex")
        if regex is not None and re.search(regex, endpoint):
            return rule["category"]
    return default
