"""`spendstream demo`: `up` with the demo budgets and synthetic traffic.

The demo app behaves like a real one: it publishes usage events with the SDK's emitter
and checks the user's cutoff flag before each call, so the cutoff visibly stops spend.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from spendstream.contract import keys
from spendstream.examples import DEMO_BUDGETS
from spendstream.settings import Settings, kafka_bootstrap
from spendstream.stack import Stack, say

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer

    from spendstream.contract.event import UsageEvent

DEMO_PREFIX = "spendstream-demo:"
HEAVY_USER = "acct-7"
HOT_FEATURE = "summarize"
LIGHT_USERS = [f"acct-{i}" for i in range(1, 21) if i != 7]


def _event(user: str, feature: str, model: str, tin: int, tout: int) -> UsageEvent:
    from spendstream.contract.event import UsageEvent

    return UsageEvent(user_id=user, feature=feature, model=model, provider="openai",
                      input_tokens=tin, output_tokens=tout, finish_reason="stop")


async def _drive(stack: Stack, settings: Settings, timeout: float) -> tuple[bool, int]:
    """Publish traffic until a warning, a cutoff and an alert were seen (or ``timeout``);
    return whether they were, and how many events were emitted."""
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer

    from spendstream.producers.emitter import Emitter

    bootstrap = kafka_bootstrap(stack.kafka_url)
    emitter = Emitter(bootstrap, settings.topic)
    await emitter.start()
    r = aioredis.from_url(stack.redis_url)
    alerts = AIOKafkaConsumer(settings.alert_topic, bootstrap_servers=bootstrap,
                              auto_offset_reset="earliest", group_id=None)
    await alerts.start()
    prefix = settings.redis_prefix
    seen: dict[str, str] = {}
    refused = 0
    warmed_up = False
    started = time.monotonic()
    next_status = started + 5
    rng = random.Random(7)
    try:
        while len(seen) < 3 and time.monotonic() - started < timeout:
            stack.check_worker()
            for _ in range(8):  # background traffic: cheap calls from many users
                emitter.emit(_event(rng.choice(LIGHT_USERS), "chat", "gpt-4o-mini", 800, 200))
            for _ in range(2):  # a feature running hot: ~$0.02 a call against $0.50 a day
                emitter.emit(_event(rng.choice(LIGHT_USERS), HOT_FEATURE, "gpt-4o", 4000, 1000))
            if not warmed_up:  # start the heavy user once the worker is counting
                warmed_up = bool(await r.exists(prefix + keys.spend_global("day")))
                if warmed_up:
                    say(f"worker is counting; {HEAVY_USER} starts making $0.02 calls")
            # The heavy user's app checks its cutoff flag before calling the model.
            elif await r.exists(prefix + keys.cutoff_user(HEAVY_USER)):
                refused += 1
                if refused == 1:
                    say(f"app: {HEAVY_USER}'s next call refused (cutoff flag set): no more spend")
            else:
                emitter.emit(_event(HEAVY_USER, "chat", "gpt-4o", 4000, 1000))
            await _watch_flags(r, prefix, seen)
            await _watch_alerts(alerts, seen)
            if time.monotonic() > next_status:
                next_status += 5
                spend = await r.get(prefix + keys.spend_user(HEAVY_USER))
                live = orjson.loads(spend) if spend else {}
                say(f"[{time.monotonic() - started:4.0f}s] events sent {emitter.stats.sent}; "
                    f"{HEAVY_USER} spent ${live.get('spent_usd', '0')} of "
                    f"${live.get('budget_usd', '?')} today; "
                    f"seen: {', '.join(seen) or 'nothing yet'}")
            await asyncio.sleep(1.0)
    finally:
        await emitter.stop()
        await alerts.stop()
        await r.aclose()
    return len(seen) == 3, emitter.stats.emitted


async def _watch_flags(r: aioredis.Redis, prefix: str, seen: dict[str, str]) -> None:
    for name, key in (("warning", keys.warn_user(HEAVY_USER)),
                      ("cutoff", keys.cutoff_user(HEAVY_USER))):
        if name in seen:
            continue
        raw = await r.get(prefix + key)
        if raw:
            flag = orjson.loads(raw)
            ttl = await r.ttl(prefix + key)
            seen[name] = key
            say(f"{name.upper()}: {HEAVY_USER} spent ${flag['spent']} of ${flag['budget']} "
                f"({flag['reason']}) -> Redis key {prefix}{key}, expires in {ttl}s")


async def _watch_alerts(consumer: AIOKafkaConsumer, seen: dict[str, str]) -> None:
    batches = await consumer.getmany(timeout_ms=50)
    for messages in batches.values():
        for m in messages:
            a = orjson.loads(m.value)
            say(f"ALERT ({a['level']}): {a['scope']} {a['subject']} {a['kind']}: "
                f"{a['spent']} of {a['budget']} {a['unit']} ({a['percent']}%)")
            if a["scope"] == "feature" and a["level"] in ("alert", "escalated"):
                seen.setdefault("alert", a["subject"])


def _clear_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3)
    keys = list(client.scan_iter(prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _ledger_report(database_url: str, emitted: int, timeout: float = 60.0) -> None:
    """Wait (bounded) until the ledger holds every event the demo emitted, then print
    the report of today from it."""
    from datetime import UTC, datetime

    from spendstream.ledger.queries import Filters, QueryError, connect, report, run
    from spendstream.ledger.report import parse_period, render_report

    deadline = time.monotonic() + timeout
    rows = 0
    with connect(database_url, read_only=True) as conn:
        while time.monotonic() < deadline:
            try:
                rows = int(run(conn, "SELECT count(*) FROM cost_logs").rows[0][0])
            except QueryError:  # the worker has not created the ledger yet
                rows = 0
            conn.rollback()
            if rows >= emitted:
                break
            time.sleep(0.2)
        if rows < emitted:
            say(f"the ledger holds {rows} of the {emitted} events after {timeout:.0f}s; "
                "the report below is partial")
        else:
            say(f"the spend ledger holds all {emitted} events; the report of today:")
        start, end = parse_period("today", datetime.now(UTC))
        print(render_report(report(conn, Filters(start, end)), "table"), flush=True)


def run_demo(settings: Settings, keep_running: bool = False, timeout: float = 120.0) -> int:
    """Run the demo; 0 when a warning, a cutoff and an alert were all seen in time."""
    path = Path(tempfile.mkdtemp(prefix="spendstream-demo-")) / "budgets.yaml"
    path.write_text(DEMO_BUDGETS)
    # Its own key prefix, cleared first: a rerun starts clean and real flags are untouched.
    settings = settings.model_copy(update={"redis_prefix": DEMO_PREFIX})
    stack = Stack(settings, path)
    try:
        stack.start()
        _clear_prefix(stack.redis_url, DEMO_PREFIX)
        say(f"demo: {HEAVY_USER} (free tier, $0.13/day) makes $0.02 calls; feature "
            f"{HOT_FEATURE} has $0.50/day; watch for a warning, a cutoff and an alert")
        ok, emitted = asyncio.run(_drive(stack, settings, timeout))
        if not ok:
            say(f"demo FAILED: not everything was seen within {timeout:.0f}s")
            return 1
        assert stack.database_url is not None
        _ledger_report(stack.database_url, emitted)
        say("demo OK: a warning, a cutoff and an alert happened.")
        if not keep_running:
            # The embedded servers keep nothing: what follows would find them gone.
            say("The embedded stack stops now. Run `spendstream demo --keep-running` to "
                "look around: the dashboard, `spendstream flags`, `report` and `sql`.")
            return 0
        say("Inspect them with:")
        say(f"  the dashboard: {stack.dashboard_url}")
        say(f"  {stack.env_hint()}")
        say("  spendstream flags          # active cutoff/warn keys with reasons and TTLs")
        say("  spendstream report         # the spend ledger: top features, users, models")
        say('  spendstream sql "SELECT feature, SUM(cost_usd) FROM cost_logs GROUP BY 1"')
        say(f"  alerts are also on the Kafka topic {settings.alert_topic}")
        say("still running (--keep-running); Ctrl-C to stop")
        return stack.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        stack.stop()
