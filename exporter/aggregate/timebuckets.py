"""Local hour, weekday and day number of UTC timestamps, fast enough for millions of rows.

A zone's UTC offset is constant within an hour almost everywhere, so it is cached per UTC hour; UTC itself
needs no lookup at all. Weekday follows seed 000: 0 = Sunday ... 6 = Saturday.
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo


class LocalTime:
    def __init__(self, zone: str = "UTC"):
        self.zone_name = zone
        self._zone = None if zone == "UTC" else (ZoneInfo(zone) if zone != "local" else None)
        self._local = zone == "local"
        self._offsets: dict[int, int] = {}

    def offset(self, ts: float) -> int:
        """Seconds to add to UTC ``ts`` to get local wall-clock time."""
        if self._zone is None and not self._local:
            return 0
        hour = int(ts // 3600)
        off = self._offsets.get(hour)
        if off is None:
            utc = datetime.fromtimestamp(hour * 3600, timezone.utc)
            local = utc.astimezone(self._zone) if self._zone is not None else utc.astimezone()
            off = int(local.utcoffset().total_seconds())
            if len(self._offsets) > 100000:
                self._offsets.clear()
            self._offsets[hour] = off
        return off

    def weekday_hour(self, ts: float) -> tuple[int, int]:
        local = int(ts) + self.offset(ts)
        days, seconds = divmod(local, 86400)
        return (days + 4) % 7, seconds // 3600  # 1970-01-01 was a Thursday (4 with Sunday = 0)

    def day(self, ts: float) -> int:
        """Local calendar day as days since 1970-01-01."""
        return (int(ts) + self.offset(ts)) // 86400
