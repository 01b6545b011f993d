"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temp dir, ``pg_ctl start`` on a free port.

PostgreSQL refuses to run as root, so as root the cluster is created and started as the ``postgres`` user
(``runuser -u postgres --``) in a directory owned by it. The server listens on 127.0.0.1 and on a unix socket
inside the temp dir. ``PG_BIN`` overrides where the binaries are looked up.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time


def find_pg_bin() -> str | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None."""
    candidates = [os.environ.get("PG_BIN")] if os.environ.get("PG_BIN") else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(os.path.dirname(found))
    for path in candidates:
        if path and os.path.exists(os.path.join(path, "initdb")) and os.path.exists(os.path.join(path, "pg_ctl")):
            return path
    return None


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (None when it can)."""
    if find_pg_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql package"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (psycopg[binary]) is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_cluster(dbname: str = "activity"):
    """Start a cluster, create ``dbname`` and yield its ``postgresql+psycopg://`` URL; stop and delete after."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    bindir = find_pg_bin()
    tmp = tempfile.mkdtemp(prefix="pgtest-")
    datadir = os.path.join(tmp, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        os.chmod(tmp, 0o700)
        prefix = ["runuser", "-u", "postgres", "--"]
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    port = _free_port()

    def run(*args, **kw):
        return subprocess.run(prefix + list(args), check=True, capture_output=True, text=True, cwd=tmp, **kw)

    started = False
    try:
        run(os.path.join(bindir, "initdb"), "-D", datadir, "-U", user, "--auth=trust", "-E", "UTF8",
            "--no-locale", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={tmp} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        run(os.path.join(bindir, "pg_ctl"), "-D", datadir, "-o", opts, "-l", os.path.join(tmp, "log"), "-w",
            "-t", "60", "start")
        started = True
        import psycopg

        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user=user, dbname="postgres",
                                     autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{dbname}"')
                break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/{dbname}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                run(os.path.join(bindir, "pg_ctl"), "-D", datadir, "-m", "immediate", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


def drop_tables(url: str, *tables: str) -> None:
    """Empty the shared cluster of the given tables, so a test starts from a store the recorder creates."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        for table in tables:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()
