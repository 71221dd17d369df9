"""PostgreSQL for the ledger tests: the machine's own server when one answers on
127.0.0.1:5432 (trust auth, user ``postgres``), else PostgreSQL from the pgserver wheel.

Each test gets its own database, dropped after it. Never a mock, never SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spendstream.embedded import EmbeddedPostgres

MACHINE = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin URL of a running PostgreSQL (the machine's, else an embedded one)."""
    if _answers(MACHINE):
        yield MACHINE
        return
    pg = EmbeddedPostgres()
    pg.start()  # raises ServiceUnavailable with the log: never a silent skip
    yield pg.url
    pg.remove()


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_url``; return its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` (its sessions are ended first)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_admin_url: str, uid: str) -> Iterator[str]:
    """A fresh database ``ss_test_<uid>`` for this test, dropped after it."""
    name = f"ss_test_{uid}"
    url = create_database(pg_admin_url, name)
    yield url
    drop_database(pg_admin_url, name)


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, which it may stop and start (outage tests)."""
    pg = EmbeddedPostgres()
    pg.start()
    yield pg
    pg.remove()
