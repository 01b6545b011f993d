"""Shared fixtures. Keep this generic: every test module may use these."""

from __future__ import annotations

import pytest

import pg_server


@pytest.fixture(scope="session")
def pg_url():
    """A ``postgresql+psycopg://`` URL of a throwaway PostgreSQL cluster (one per test session)."""
    reason = pg_server.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pg_server.postgres_cluster() as url:
        yield url
