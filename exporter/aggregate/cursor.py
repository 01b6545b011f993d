"""Which rows of a table have been folded: exactly once, even when ids commit out of order (PostgreSQL)."""

from __future__ import annotations

#: On PostgreSQL a lower id can commit after a higher one; a missing id is waited for this long.
PG_GAP_GRACE_SECONDS = 60.0


def grace_for(engine) -> float:
    """SQLite commits ids in order (one writer at a time): nothing to wait for. Other databases: wait."""
    return 0.0 if engine.dialect.name == "sqlite" else PG_GAP_GRACE_SECONDS


class IdCursor:
    """Which ids have been folded, exactly once each, even when ids commit out of order.

    ``safe``: every id at or below it has been folded or is known never to come. Ids above ``safe`` that were
    folded are in ``seen``; a gap below the highest seen id stays open for ``grace`` seconds (an uncommitted
    transaction may still fill it) and is then given up. On SQLite ids commit in order, so ``grace`` is 0.
    """

    def __init__(self, grace: float):
        self.grace = grace
        self.safe = 0
        self.seen: set[int] = set()
        self.gaps: dict[int, float] = {}

    def is_new(self, row_id: int) -> bool:
        return row_id > self.safe and row_id not in self.seen

    def mark(self, row_id: int) -> None:
        self.seen.add(row_id)

    def mark_many(self, row_ids) -> None:
        """Ids arrive ascending; without a grace period the cursor simply moves to the last one."""
        if not row_ids:
            return
        if self.grace <= 0:
            self.safe = max(self.safe, row_ids[-1])
        else:
            self.seen.update(row_ids)

    def settle(self, now: float) -> None:
        """Advance ``safe`` over folded ids and over gaps that waited long enough."""
        if not self.seen:
            self.gaps.clear()
            return
        top = max(self.seen)
        if self.grace <= 0:
            self.safe, self.seen, self.gaps = top, set(), {}
            return
        for missing in range(self.safe + 1, top):
            if missing not in self.seen and missing not in self.gaps:
                self.gaps[missing] = now
                if len(self.gaps) > 100000:
                    break
        while True:
            nxt = self.safe + 1
            if nxt in self.seen:
                self.seen.discard(nxt)
            elif nxt in self.gaps and now - self.gaps[nxt] >= self.grace:
                del self.gaps[nxt]
            else:
                break
            self.safe = nxt

    def reset(self, safe: int) -> None:
        """The table was emptied or replaced (its highest id fell below ours): follow it down."""
        self.safe, self.seen, self.gaps = safe, set(), {}

    def state(self) -> dict:
        return {"safe": self.safe, "seen": sorted(self.seen), "gaps": [[k, v] for k, v in self.gaps.items()]}

    def load_state(self, s) -> None:
        if isinstance(s, int):  # an older checkpoint kept only the id
            self.reset(s)
            return
        self.safe = s["safe"]
        self.seen = set(s["seen"])
        self.gaps = {k: v for k, v in s["gaps"]}
