"""Per-day item counts that stay small: past days are frozen into two sorted arrays.

A year of daily book counts for a busy library holds millions of (day, item) pairs. As dict entries they cost
about 100 bytes each; frozen into ``array('q')`` pairs they cost 16. Only today (and a day that receives a late
event) stays a ``Counter``; ``freeze_before(day)`` packs the others.
"""

from __future__ import annotations

from array import array
from collections import Counter


class DayCounts:
    def __init__(self):
        self.live: dict[int, Counter] = {}
        self.frozen: dict[int, FrozenCounts] = {}

    def add_items(self, day: int, items) -> None:
        """Count each item of ``items`` (an iterable, may repeat) once more on ``day``, at C speed."""
        counts = self.live.get(day)
        if counts is None:
            frozen = self.frozen.pop(day, None)
            counts = self.live[day] = frozen.thaw() if frozen is not None else Counter()
        counts.update(items)

    def items(self, day: int):
        """(item, count) pairs of one day."""
        counts = self.live.get(day) or self.frozen.get(day)
        return counts.items() if counts is not None else ()

    def days(self) -> set[int]:
        return set(self.live) | set(self.frozen)

    def freeze_before(self, day: int) -> None:
        for old in [d for d in self.live if d < day]:
            self.frozen[old] = FrozenCounts(self.live.pop(old))

    def drop_before(self, day: int) -> None:
        for store in (self.live, self.frozen):
            for old in [d for d in store if d < day]:
                del store[old]

    def state(self) -> dict:
        return {str(d): [[i, n] for i, n in self.items(d)] for d in self.days()}

    def load_state(self, s: dict) -> None:
        self.live = {int(d): Counter({i: n for i, n in pairs}) for d, pairs in s.items()}
        self.frozen = {}


class WindowSums:
    """Sums of ``DayCounts`` over the days before ``today`` for several windows, kept up to date by deltas:
    a new day adds the day that became past and subtracts the one that left; a late event adds itself."""

    def __init__(self, counts: DayCounts):
        self.counts = counts
        self.today: int | None = None
        self.sums: dict[int, Counter] = {}  # window length in days -> Counter over [today - n + 1, today - 1]

    def past(self, today: int, days: int) -> Counter:
        if today != self.today:
            self._move_to(today)
        total = self.sums.get(days)
        if total is None:
            total = Counter()
            for day in range(today - days + 1, today):
                total.update(dict(self.counts.items(day)))
            self.sums[days] = total
        return total

    def late_items(self, day: int, items: list) -> None:
        """Account events that arrived for a past day (today's events are summed when today becomes past)."""
        if self.today is None or day >= self.today:
            return
        for days, total in self.sums.items():
            if day >= self.today - days + 1:
                total.update(items)

    def _move_to(self, today: int) -> None:
        if self.today is None or today < self.today or today - self.today > 31:
            self.sums = {}
        else:
            for days, total in self.sums.items():
                for day in range(self.today, today):  # became past
                    total.update(dict(self.counts.items(day)))
                for day in range(self.today - days + 1, today - days + 1):  # left the window
                    total.subtract(dict(self.counts.items(day)))
                for item in [i for i, n in total.items() if n <= 0]:
                    del total[item]
        self.today = today


class FrozenCounts:
    """A read-only, compact stand-in for a finished day's ``Counter`` (``items()``, ``len``, iteration)."""

    __slots__ = ("keys", "values")

    def __init__(self, counter: Counter):
        self.keys = array("q", counter.keys())
        self.values = array("q", counter.values())

    def items(self):
        return zip(self.keys, self.values)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return iter(self.keys)

    def thaw(self) -> Counter:
        return Counter(dict(self.items()))
