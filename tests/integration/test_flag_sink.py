"""The Redis flag sink: batched, coalesced, and converging after a Redis outage."""

from __future__ import annotations

import time

import pytest
import redis

from spendstream.contract.keys import CUTOFF_GLOBAL, cutoff_user, spend_user
from spendstream.embedded import EmbeddedRedis
from spendstream.streams.flags import RedisFlagSink

pytestmark = pytest.mark.integration


async def test_writes_are_kept_through_an_outage_and_converge(tmp_path):
    server = EmbeddedRedis(workdir=tmp_path)
    server.start()
    sink = RedisFlagSink(server.url, prefix="t:", interval=0.05)
    expire = int(time.time()) + 3600
    try:
        sink.set(cutoff_user("a"), {"v": 1}, expire)
        assert await sink.flush()
        client = redis.Redis.from_url(server.url)
        assert client.get("t:" + cutoff_user("a")) == b'{"v":1}'
        assert 3500 < client.ttl("t:" + cutoff_user("a")) <= 3600

        server.stop()
        sink.set(cutoff_user("b"), {"v": 2}, expire)
        sink.set(spend_user("b"), {"usd": "0.01"}, expire)
        sink.set(spend_user("b"), {"usd": "0.02"}, expire)  # coalesced: newest wins
        assert not await sink.flush()
        assert not sink.healthy and sink.pending == 2 and sink.stats.errors == 1

        server = EmbeddedRedis(port=server.port, workdir=tmp_path)  # back on the same port
        server.start()
        deadline = time.monotonic() + 10
        while not await sink.flush():
            assert time.monotonic() < deadline, "the sink never reconnected"
        client = redis.Redis.from_url(server.url)
        assert client.get("t:" + cutoff_user("b")) == b'{"v":2}'
        assert client.get("t:" + spend_user("b")) == b'{"usd":"0.02"}'
        assert sink.healthy and sink.pending == 0
    finally:
        await sink.stop()
        server.stop()


async def test_extend_only_never_shortens_a_live_flag_and_expired_writes_are_skipped(
        redis_url, uid):
    sink = RedisFlagSink(redis_url, prefix=f"{uid}:")
    client = redis.Redis.from_url(redis_url)
    try:
        now = int(time.time())
        sink.set(CUTOFF_GLOBAL, {"id": "daily_cap"}, now + 3600, extend_only=True)
        sink.set(CUTOFF_GLOBAL, {"id": "tpm"}, now + 60, extend_only=True)
        sink.set(spend_user("old"), {"x": 1}, now - 1)
        assert await sink.flush()
        assert client.get(f"{uid}:" + CUTOFF_GLOBAL) == b'{"id":"daily_cap"}'
        assert client.get(f"{uid}:" + spend_user("old")) is None
        assert sink.stats.skipped_expired == 1
    finally:
        await sink.stop()


async def test_a_flush_writes_every_key_once_with_its_own_value_and_expiry(redis_url, uid,
                                                                            monkeypatch):
    # Keys, values and expiry times travel joined in one argument each, SET_MANY_KEYS per
    # script call: every key must come out with its own value and time, across chunk
    # boundaries, and a key holding a newline (it cannot travel joined) on its own.
    from spendstream.streams import flags

    monkeypatch.setattr(flags, "SET_MANY_KEYS", 7)
    sink = RedisFlagSink(redis_url, prefix=f"{uid}:")
    client = redis.Redis.from_url(redis_url)
    now = int(time.time())
    users = [f"u{i}" for i in range(20)] + ["new\nline", "ユーザー", 'q"uote']
    try:
        for i, user in enumerate(users):
            sink.set(spend_user(user), f'{{"n":{i}}}'.encode(), now + 600 + 60 * (i % 3))
        assert await sink.flush()
        for i, user in enumerate(users):
            key = f"{uid}:" + spend_user(user)
            assert client.get(key) == f'{{"n":{i}}}'.encode(), user
            assert now + 600 + 60 * (i % 3) - 5 < now + client.ttl(key) <= now + 600 + 60 * (i % 3)
        assert sink.stats.written == len(users)
    finally:
        await sink.stop()
        client.close()
