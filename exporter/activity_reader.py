"""Reading new ``cwa_user_activity`` rows in id order, in this process or in a helper process.

Reading and parsing a row costs about as much as folding it, and a refresh is one Python thread. For a big
backlog (a cold start on years of history, catching up after downtime) ``HelperReader`` runs the reading and
parsing in a second process, which works on the next chunk while this one folds the last: the two halves of
the work run on two cores. The helper also walks the rows into per-user sessions (from the open sessions the
refresher sends with each request) and sends what each chunk closed. Parsed chunks travel pickled (a fifth of
the cost of parsing them: the parser shares one object per distinct name, type and ``extra_data``, which
pickle sends once per chunk).

Only where ids commit in order (SQLite): on PostgreSQL the refresher's gap-holding cursor decides row by row
which ids are new, so rows are read in this process.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import select
import sqlite3
import subprocess
import sys

from exporter import db
from exporter.aggregate.events import EVENT_COLUMNS, TABLE, Batch, BatchParser
from exporter.aggregate.health import Health
from exporter.aggregate.sessions import Sessions

try:
    import fcntl
except ImportError:  # not a Unix
    fcntl = None

log = logging.getLogger("exporter.reader")
IDLE_EXIT_SECONDS = 600.0
PIPE_BUFFER = 1 << 20  # Linux's default pipe-max-size; a parsed chunk of 10,000 rows pickles to about 300 KB


def activity_query(dialect: str) -> str:
    """Plain DB-API SQL for a chunk. SQLite converts timestamps itself, in the timestamp column's place
    (C speed, the same reading as seed 000's SQL: CWA's format and ISO-8601 with ``T``, fractions, ``Z``
    and offsets); text it cannot read comes back as it is, for the parser to try."""
    if dialect == "sqlite":
        whole = "unixepoch(timestamp)" if sqlite3.sqlite_version_info >= (3, 38) else \
            "CAST(strftime('%s', timestamp) AS INTEGER)"
        epoch = ("CASE WHEN instr(timestamp, '.') THEN strftime('%s', timestamp) + strftime('%f', timestamp)"
                 f" - strftime('%S', timestamp) ELSE {whole} END")
        converted = f"CASE WHEN typeof(timestamp) = 'text' THEN coalesce({epoch}, timestamp) END"
        columns = ", ".join(converted if c == "timestamp" else c for c in EVENT_COLUMNS)
        return f"SELECT {columns} FROM {TABLE} WHERE id > ? ORDER BY id LIMIT ?"
    return f"SELECT {', '.join(EVENT_COLUMNS)} FROM {TABLE} WHERE id > %s ORDER BY id LIMIT %s"


def chunks(dbapi_conn, query: str, after: int, limit: int):
    """Chunks of rows with ``id > after`` in id order, as plain tuples, through a DB-API connection (no
    Row object per row). SQLite text comes as bytes: the parser decodes each distinct value once, instead
    of the driver decoding every value (and failing the chunk on invalid UTF-8)."""
    text_factory = getattr(dbapi_conn, "text_factory", None)
    if text_factory is not None:
        dbapi_conn.text_factory = bytes
    dbapi = dbapi_conn.cursor()
    try:
        while True:
            dbapi.execute(query, (after, limit))
            rows = dbapi.fetchall()
            if rows:
                yield rows
            if len(rows) < limit:
                break
            after = rows[-1][0]
    finally:
        dbapi.close()
        if text_factory is not None:
            dbapi_conn.text_factory = text_factory


def backlog(dbapi_conn, after: int) -> int:
    """How many ids lie above ``after`` (an upper bound on the rows to read; cheap: the highest rowid)."""
    dbapi = dbapi_conn.cursor()
    try:
        dbapi.execute(f"SELECT max(id) FROM {TABLE}")
        top = dbapi.fetchone()[0]
    finally:
        dbapi.close()
    return max(0, (top or 0) - after)


class HelperFailed(Exception):
    """The helper process died or could not start: read in this process instead."""


class HelperDatabaseError(Exception):
    """The helper could not read the database (reported like any database error)."""


class HelperReader:
    """The parent's side of the helper process, started on first use and kept for later backlogs.

    The helper is ``python -m exporter.activity_reader`` with pipes for stdin and stdout, not a
    ``multiprocessing`` child: that would re-run the host's main script in the child when it lacks a
    ``__main__`` guard. Messages are length-prefixed pickles; only this package's own process reads them."""

    def __init__(self, activity_db: str, chunk_size: int):
        self.activity_db = activity_db
        self.chunk_size = chunk_size
        self._process: subprocess.Popen | None = None

    def batches(self, after: int, sessions: Sessions):
        """Yields ``(rows read, last id read, Batch, {(table, reason): n malformed})`` per chunk of rows with
        ``id > after``. The helper walks the rows into sessions starting from ``sessions`` (open ones, gap);
        each batch carries what its rows changed (``Batch.sessions``, applied with ``Sessions.apply``).
        Raises ``HelperDatabaseError`` for database errors and ``HelperFailed`` when the helper is gone; a
        consumer that stops early (an exception while folding) also ends the helper."""
        finished = False
        try:
            self._start()
            _send(self._process.stdin, ("read", after, sessions.gap, sessions.state()))
            while True:
                message = _receive(self._process.stdout)
                if message[0] == "batch":
                    _, n, last_id, columns, counts, walked, malformed = message
                    batch = Batch(*columns, counts=counts)
                    batch.sessions = walked
                    yield n, last_id, batch, malformed
                elif message[0] == "done":
                    finished = True
                    return
                else:
                    finished = True  # the helper reported and waits for the next request
                    raise HelperDatabaseError(message[1])
        except (EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
            raise HelperFailed(f"helper process lost: {e!r}") from e
        finally:
            if not finished:
                self.close()

    def _start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.close()
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "exporter.activity_reader", self.activity_db, str(self.chunk_size)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as e:
            raise HelperFailed(f"cannot start the helper process: {e}") from e
        try:  # room for a few chunks, so the helper reads ahead instead of waiting for each one to be taken
            fcntl.fcntl(self._process.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BUFFER)
        except (AttributeError, OSError):
            pass  # not Linux, or a lower pipe-max-size: the helper then stays one chunk ahead
        log.info("reading the backlog in helper process %d", self._process.pid)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        process.kill()
        process.wait(timeout=5)


def _send(stream, message) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _receive(stream):
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("helper closed its output")
    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("helper output cut short")
    return pickle.loads(data)


def _serve(requests, replies, activity_db: str, chunk_size: int) -> None:
    """The helper process: answers each ``("read", after, session gap, open sessions)`` with parsed chunks,
    then ``("done",)``. Opens the file anew for each request (a replaced database is noticed); leaves after
    ``IDLE_EXIT_SECONDS`` unused."""
    gc.disable()  # only caches live here; nothing cyclic
    health = Health()
    parser = BatchParser(health)
    query = activity_query("sqlite")
    while True:
        try:
            if not select.select([requests], [], [], IDLE_EXIT_SECONDS)[0]:
                return  # idle: give the memory back; the exporter starts a new helper when it needs one
            request = _receive(requests)
        except (EOFError, OSError):
            return
        if request[0] != "read":
            return
        _, after, gap, open_sessions = request
        sessions = Sessions(gap)
        sessions.load_state(open_sessions)
        try:
            conn = db.sqlite_readonly(activity_db)
            try:
                for rows in chunks(conn, query, after, chunk_size):
                    batch = parser.parse(rows)
                    malformed = dict(health.malformed_rows)
                    health.malformed_rows.clear()
                    counts = batch.count_ahead()
                    walked = sessions.walk(batch.user_keys(), batch.ts)
                    _send(replies, ("batch", len(rows), rows[-1][0], batch.columns(), counts, walked, malformed))
            finally:
                conn.close()
            _send(replies, ("done",))
        except (BrokenPipeError, EOFError):
            return
        except Exception as e:  # the database failed: report it, stay ready for the next refresh
            health.malformed_rows.clear()
            _send(replies, ("error", str(e).splitlines()[0][:200] if str(e) else type(e).__name__))


def _main() -> None:
    """Replies go through a private copy of stdout; file descriptor 1 then points at stderr, so that
    anything else that prints (a library, a profiler) cannot corrupt the stream of messages."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, replies, sys.argv[1], int(sys.argv[2]))


if __name__ == "__main__":
    _main()
