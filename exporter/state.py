"""The exporter's checkpoint: cursor and aggregates in one JSON file, written atomically.

Cursor and aggregates are saved together from the refresher thread, so a restart resumes exactly where the
saved aggregates end: nothing is counted twice and nothing is re-read. A checkpoint made under settings that
change label values (user label mode, time zones, database) is ignored, and history is re-read.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

log = logging.getLogger("exporter.state")
VERSION = 1


def fingerprint(config) -> dict:
    return {
        "activity_db": config.activity_db,
        "user_label": config.user_label,
        "timezone": config.timezone,
        "history_timezone": config.history_timezone,
        "windows": list(config.windows),
        "report_start_time": config.report_start_time,
    }


def save(path: str, config, payload: dict) -> None:
    data = {"version": VERSION, "fingerprint": fingerprint(config), **payload}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path: str | None, config) -> dict | None:
    """The saved payload, or None when there is none or it does not fit the current settings."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable state file %s: %s", path, e)
        return None
    if data.get("version") != VERSION or data.get("fingerprint") != fingerprint(config):
        log.warning("state file %s was made with other settings; starting from the beginning", path)
        return None
    return data
