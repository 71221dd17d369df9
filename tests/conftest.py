"""Fixtures that start real services on free ports and fail loudly when they cannot.

A test that asks for ``broker`` or ``redis_url`` talks to a real Tansu broker and a real
Redis/Valkey server; nothing is mocked. Each test gets its own topic names and key prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from spendstream.embedded import EmbeddedBroker, EmbeddedRedis


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One Tansu broker for the session (topics are unique per test)."""
    b = EmbeddedBroker()
    b.start()  # raises ServiceUnavailable with the log: never a silent skip
    yield b
    b.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One Redis-compatible server for the session (key prefixes are unique per test)."""
    r = EmbeddedRedis()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session's Redis server."""
    return redis_server.url


@pytest.fixture
def uid() -> str:
    """A short unique suffix for this test's topics, groups and key prefixes."""
    return uuid.uuid4().hex[:10]


from tests.pg import database_url, own_postgres, pg_admin_url  # noqa: E402, F401 - fixtures
