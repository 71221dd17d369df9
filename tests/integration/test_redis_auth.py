"""A password-protected Redis (``--requirepass``): the guard and the CLI work with
``redis://:PASSWORD@host:port/0``, and a wrong or missing password is a clear error that
never contains the password."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from spendstream.cli import main
from spendstream.contract.keys import cutoff_feature
from spendstream.domain.budgets import parse_budgets
from spendstream.embedded import EmbeddedRedis
from spendstream.errors import FeatureDisabled, ServiceUnavailable
from spendstream.producers.guard import AsyncGuard, Guard
from spendstream.settings import load_settings

pytestmark = pytest.mark.integration

PASSWORD = "rds-AuthTest-pw-4Kq9"
WRONG = "not-the-pw-7Lm2"
MESSAGES = [{"role": "user", "content": "hi"}]

CHAT = parse_budgets({"features": {"chat": {"max_output_tokens": 50}}})
"""A budgets file that knows the feature the calls name (unknown ones are refused)."""


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[EmbeddedRedis]:
    """A Redis that refuses every command until AUTH with :data:`PASSWORD`."""
    r = EmbeddedRedis(password=PASSWORD)
    r.start()
    yield r
    r.stop()


def _url(server: EmbeddedRedis, password: str | None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{server.port}/0"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, uid: str) -> pytest.MonkeyPatch:
    monkeypatch.setenv("SPENDSTREAM_REDIS_PREFIX", f"auth{uid}:")
    return monkeypatch


def test_cli_and_guard_work_with_the_password(locked_redis: EmbeddedRedis,
                                              env: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    env.setenv("SPENDSTREAM_REDIS_URL", _url(locked_redis, PASSWORD))
    assert main(["disable", "chat", "--reason", "incident 42"]) == 0
    assert main(["flags"]) == 0
    out = capsys.readouterr().out
    assert cutoff_feature("chat") in out and "incident 42" in out
    assert PASSWORD not in out

    settings = load_settings()
    guard = Guard.from_settings(settings, CHAT, None)
    guard.cache_ttl = 0
    with pytest.raises(FeatureDisabled, match="incident 42"):
        guard.admit("acct-1", "chat", MESSAGES, model="gpt-4o")
    assert main(["enable", "chat"]) == 0
    assert guard.admit("acct-1", "chat", MESSAGES, model="gpt-4o").feature == "chat"
    assert guard.stats.redis_errors == 0
    guard.close()


async def test_the_async_guard_works_with_the_password(locked_redis: EmbeddedRedis,
                                                       uid: str) -> None:
    guard = AsyncGuard(_url(locked_redis, PASSWORD), CHAT, prefix=f"auth{uid}:",
                       fail_closed=True)
    assert (await guard.admit("acct-1", "chat", MESSAGES, model="gpt-4o")).model
    assert guard.stats.redis_errors == 0
    await guard.aclose()


@pytest.mark.parametrize("password", [WRONG, None], ids=["wrong", "missing"])
def test_the_cli_says_the_credentials_were_refused(locked_redis: EmbeddedRedis,
                                                   env: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str],
                                                   password: str | None) -> None:
    env.setenv("SPENDSTREAM_REDIS_URL", _url(locked_redis, password))
    for command in (["flags"], ["disable", "chat"], ["enable", "chat"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "refused the credentials in SPENDSTREAM_REDIS_URL" in err
        assert "check the password" in err
        assert PASSWORD not in err and WRONG not in err
        if password:
            assert f"redis://:***@127.0.0.1:{locked_redis.port}/0" in err


@pytest.mark.parametrize("fail_closed", [True, False], ids=["fail-closed", "fail-open"])
def test_the_guard_says_the_credentials_were_refused(locked_redis: EmbeddedRedis,
                                                     caplog: pytest.LogCaptureFixture,
                                                     fail_closed: bool) -> None:
    caplog.set_level(logging.DEBUG)
    guard = Guard(_url(locked_redis, WRONG), CHAT, fail_closed=fail_closed)
    if fail_closed:
        with pytest.raises(ServiceUnavailable, match="credentials") as e:
            guard.admit("acct-1", "chat", MESSAGES, model="gpt-4o")
        assert WRONG not in str(e.value) and PASSWORD not in str(e.value)
    else:
        assert guard.admit("acct-1", "chat", MESSAGES, model="gpt-4o").feature == "chat"
        assert guard.stats.failed_open == 1
    [warning] = [r for r in caplog.records if r.name == "spendstream.guard"]
    assert "refused the guard's credentials" in warning.getMessage()
    assert WRONG not in caplog.text and PASSWORD not in caplog.text
    guard.close()
