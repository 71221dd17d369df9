"""No secret reaches a log line, an error message or the worker's output.

Every secret setting gets a distinctive value (a Slack bot token, a Redis password, a Kafka
SASL password, a TLS key password); then the code paths that talk to those services run,
mostly against services that fail (a closed port, a refused password, a broker without
SASL, Slack answering ``invalid_auth``), with every logger at DEBUG; the worker runs as a
child process at ``--log-level debug``. None of the secret strings may appear anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer

from spendstream.cli import main
from spendstream.contract.keys import cutoff_user
from spendstream.domain.budgets import parse_budgets
from spendstream.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from spendstream.errors import ServiceUnavailable, SpendstreamError
from spendstream.kafka_auth import kafka_client_kwargs
from spendstream.producers import Emitter, UsageEvent
from spendstream.producers.guard import Guard
from spendstream.settings import load_settings
from spendstream.streams.topics import ensure_topics
from tests.helpers import WorkerProcess, wait_until
from tests.slack_fake import SlackFake

pytestmark = pytest.mark.integration

TOKEN = "xoxb-9999-8888-LeakCheckB0tT0ken"
REDIS_PW = "redis-LeakCheck-pw-3Hd8"
SASL_PW = "sasl-LeakCheck-pw-6Tz1"
KEY_PW = "tlskey-LeakCheck-pw-2Wq5"
SECRETS = (TOKEN, REDIS_PW, SASL_PW, KEY_PW)

BUDGETS = """\
users:
  default_tier: free
  tiers: {free: {usd: 0.05}}
prices:
  gpt-4o: {input: 2.50, output: 10.00}
"""


def assert_clean(text: str, where: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where} contains secret(s) {leaked}:\n{text[-3000:]}"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[EmbeddedRedis]:
    r = EmbeddedRedis(password=REDIS_PW)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch, locked_redis: EmbeddedRedis,
               broker: EmbeddedBroker, uid: str) -> pytest.MonkeyPatch:
    """All secrets set, as an operator would: Kafka over SASL (the test broker has no
    SASL, so every Kafka connection is refused after the handshake)."""
    for name, value in {
        "SPENDSTREAM_KAFKA_URL": broker.url,
        "SPENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SPENDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SPENDSTREAM_KAFKA_SASL_USERNAME": "spend-app",
        "SPENDSTREAM_KAFKA_SASL_PASSWORD": SASL_PW,
        "SPENDSTREAM_KAFKA_SSL_KEY_PASSWORD": KEY_PW,
        "SPENDSTREAM_REDIS_URL": f"redis://:{REDIS_PW}@127.0.0.1:{locked_redis.port}/0",
        "SPENDSTREAM_REDIS_PREFIX": f"leak{uid}:",
        "SPENDSTREAM_TOPIC": f"leak-{uid}",
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_CHANNEL": "C0LEAK",
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_settings_and_their_errors_hide_secrets(secret_env: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings()
    for text in (repr(settings), str(settings), settings.model_dump_json(),
                 repr(kafka_client_kwargs(settings).keys())):
        assert_clean(text, "the settings' text")
    secret_env.setenv("SPENDSTREAM_PARTITIONS", "0")  # invalid: the error lists settings
    assert main(["flags"]) == 2
    captured = capsys.readouterr()
    assert "SPENDSTREAM_PARTITIONS" in captured.err
    assert_clean(captured.out + captured.err, "the CLI's settings error")


@pytest.mark.parametrize("redis_url", ["closed-port", "wrong-password"])
def test_cli_redis_errors_hide_the_password(secret_env: pytest.MonkeyPatch,
                                            locked_redis: EmbeddedRedis,
                                            capsys: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture,
                                            redis_url: str) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port() if redis_url == "closed-port" else locked_redis.port
    password = REDIS_PW if redis_url == "closed-port" else f"{REDIS_PW}-wrong"
    secret_env.setenv("SPENDSTREAM_REDIS_URL", f"redis://:{password}@127.0.0.1:{port}/0")
    for command in (["flags"], ["disable", "chat", "--ttl", "1m"], ["enable", "chat"]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert "spendstream: error: Redis" in captured.err
        assert_clean(captured.out + captured.err, f"`spendstream {command[0]}`")
    assert_clean(caplog.text, "the log")


def test_guard_redis_errors_hide_the_password(locked_redis: EmbeddedRedis,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    messages = [{"role": "user", "content": "hi"}]
    for url in (f"redis://:{REDIS_PW}@127.0.0.1:{free_port()}/0",
                f"redis://:{REDIS_PW}-wrong@127.0.0.1:{locked_redis.port}/0"):
        for fail_closed in (False, True):
            guard = Guard(url, parse_budgets({"features": {"chat": {}}}), fail_closed=fail_closed)
            try:
                guard.admit("acct-1", "chat", messages, model="gpt-4o")
            except ServiceUnavailable as e:
                assert_clean(f"{e!s} {e!r} {e.__cause__!s} {e.__cause__!r}", "the guard's error")
            guard.close()
    assert caplog.records, "the outages were not logged"
    assert_clean(caplog.text, "the guard's log")


async def test_kafka_sasl_paths_hide_the_password(secret_env: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = load_settings()
    kwargs = kafka_client_kwargs(settings)
    # The broker answers the SASL handshake with "unsupported mechanism": a real refusal.
    with pytest.raises(ServiceUnavailable) as e:
        await ensure_topics(settings.bootstrap_servers, [settings.topic], 1, timeout=1.5,
                            **kwargs)
    assert_clean(f"{e.value!s} {e.value.__cause__!r}", "ensure_topics' error")

    emitter = Emitter.from_settings(settings, spill_dir=None)
    await emitter.start()
    emitter.emit(UsageEvent(user_id="acct-1", feature="chat", model="gpt-4o"))

    def refused() -> bool:
        return any("cannot connect to Kafka" in r.getMessage() for r in caplog.records)
    deadline = time.monotonic() + 30
    while not refused():
        assert time.monotonic() < deadline, "the emitter never reported the refusal"
        await asyncio.sleep(0.05)
    assert await emitter.stop(timeout=0.5) is False
    assert_clean(caplog.text, "the Kafka clients' log")


class DebugWorker(WorkerProcess):
    """``spendstream worker --log-level debug``: the most a worker ever prints."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spendstream", "worker", "--log-level", "debug"],
            env={**os.environ, **env}, stdout=self._out, stderr=subprocess.STDOUT)


async def _publish(bootstrap: str, topic: str, user: str, n: int) -> None:
    await ensure_topics(bootstrap, [topic], 2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for _ in range(n):
            event = {"schema": 1, "event_id": uuid.uuid4().hex,
                     "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "user_id": user,
                     "feature": "chat", "model": "gpt-4o", "input_tokens": 4000,
                     "output_tokens": 1000}  # $0.02 each
            await producer.send_and_wait(topic, orjson.dumps(event), key=user.encode())
    finally:
        await producer.stop()


def test_the_worker_output_holds_no_secret(broker: EmbeddedBroker, locked_redis: EmbeddedRedis,
                                           uid: str, tmp_path: Path) -> None:
    """A debug-level worker with Redis AUTH and a Slack bot token Slack refuses: it
    writes the cutoff flag (AUTH works) and fails to post (invalid_auth), saying neither
    secret."""
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    topic, prefix = f"leak{uid}.usage", f"leak{uid}:"
    url = f"redis://:{REDIS_PW}@127.0.0.1:{locked_redis.port}/0"
    with SlackFake(token="xoxb-the-only-token-slack-accepts") as slack:
        worker = DebugWorker({
            "SPENDSTREAM_KAFKA_URL": broker.url, "SPENDSTREAM_REDIS_URL": url,
            "SPENDSTREAM_BUDGETS": str(budgets), "SPENDSTREAM_TOPIC": topic,
            "SPENDSTREAM_REDIS_PREFIX": prefix, "SPENDSTREAM_APP_ID": f"leak{uid}",
            "SPENDSTREAM_PARTITIONS": "2", "SPENDSTREAM_STATE_DIR": str(tmp_path / "state"),
            "SPENDSTREAM_KAFKA_SSL_KEY_PASSWORD": KEY_PW,
            "SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "C0LEAK", "SLACK_API_URL": slack.api_url,
        }, tmp_path / "worker.log")
        try:
            asyncio.run(_publish(broker.bootstrap, topic, "acct-leak", 4))  # $0.08 > $0.05
            flags = redis.Redis.from_url(url)
            wait_until(lambda: flags.get(prefix + cutoff_user("acct-leak")), 90,
                       "the cutoff flag in the password-protected Redis", check=worker.alive)
            wait_until(lambda: "not delivered" in worker.output(), 60,
                       "the refused Slack post in the worker's log", check=worker.alive)
            assert slack.requests and not slack.delivered
        finally:
            worker.stop()
    output = worker.log.read_text(errors="replace")
    assert "invalid_auth" in output
    assert_clean(output, "the worker's output")


def test_up_prints_the_redis_url_without_its_password(secret_env: pytest.MonkeyPatch) -> None:
    from spendstream.stack import Stack

    stack = Stack(load_settings(), Path("budgets.yaml"))
    stack.broker = EmbeddedBroker(port=9)  # not started: env_hint only reads its URL
    hint = stack.env_hint()
    assert "SPENDSTREAM_REDIS_URL=redis://:***@127.0.0.1:" in hint
    assert_clean(hint, "`up`'s export hint")


def test_unexpected_errors_from_main_carry_no_secret(secret_env: pytest.MonkeyPatch) -> None:
    # Every SpendstreamError the CLI prints went through one of the paths above; a settings
    # error naming a bad secret's variable must still not echo its value.
    secret_env.setenv("SPENDSTREAM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    with pytest.raises(SpendstreamError) as e:
        kafka_client_kwargs(load_settings())
    assert "SPENDSTREAM_KAFKA_SECURITY_PROTOCOL" in str(e.value)
    assert_clean(str(e.value), "the Kafka settings error")
