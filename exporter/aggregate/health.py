"""The exporter's own bookkeeping shared by every aggregator: rows ingested and malformed rows, by table."""

from __future__ import annotations

import threading
from collections import Counter


class Health:
    """Monotonic counters for ``activity_exporter_rows_ingested_total`` and ``..._malformed_rows_total``."""

    def __init__(self):
        self._lock = threading.Lock()
        self.ingested_rows: Counter = Counter()
        self.malformed_rows: Counter = Counter()  # key: (table, reason)
        self.refresh_errors: Counter = Counter()  # key: stage

    def ingested(self, table: str, n: int = 1) -> None:
        with self._lock:
            self.ingested_rows[table] += n

    def malformed(self, table: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self.malformed_rows[(table, reason)] += n

    def refresh_error(self, stage: str) -> None:
        with self._lock:
            self.refresh_errors[stage] += 1

    def state(self) -> dict:
        with self._lock:
            return {
                "ingested": dict(self.ingested_rows),
                "malformed": [[t, r, n] for (t, r), n in self.malformed_rows.items()],
                "refresh_errors": dict(self.refresh_errors),
            }

    def load_state(self, state: dict) -> None:
        with self._lock:
            self.ingested_rows = Counter(state.get("ingested", {}))
            self.malformed_rows = Counter({(t, r): n for t, r, n in state.get("malformed", [])})
            self.refresh_errors = Counter(state.get("refresh_errors", {}))
