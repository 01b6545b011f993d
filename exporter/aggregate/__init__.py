"""Pure aggregation logic: parsed events in, metric families out. No I/O to databases or Prometheus here.

The contract every aggregator follows (the refresher drives them):

- ``Event``: one parsed ``cwa_user_activity`` row (see ``exporter.aggregate.events``).
- A *folder* consumes events of the activity table in id order: ``fold_batch(batch)`` takes a chunk as
  columns (``events.Batch``; count whole columns with ``Counter``, walk rows only for order-dependent state),
  ``fold(event)`` one event (a one-row batch); ``advance(now)`` once per refresh after the new rows (close
  sessions, expire windows);
  ``families(now) -> list[prometheus_client.core.Metric]`` for the snapshot;
  ``state() -> dict`` (JSON-serialisable) and ``load_state(dict)`` for the checkpoint.
- A *source* reads a database itself (Calibre ``metadata.db``, CWA history tables):
  ``name``; ``database`` (``"activity"`` or ``"calibre"``, for ``activity_exporter_database_up``);
  ``refresh(now)`` (may raise; the refresher counts the error and keeps the previous families);
  ``families(now)``; ``state()``; ``load_state(dict)``.
- ``Health`` (``exporter.aggregate.health``) is shared: ``malformed(table, reason)``, ``ingested(table, n)``.
"""
