"""A first throughput figure: N events through one worker on the embedded broker and Redis.

    python bench/throughput.py [N]

Prints the publish rate, the worker's end-to-end rate (first event to every total final
in Redis) and checks the global total equals the exact sum published. Not part of the
test run; the fuller benchmark of issue 4 will grow from here.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import redis
from aiokafka import AIOKafkaProducer

from spendstream.embedded import EmbeddedBroker, EmbeddedRedis
from spendstream.streams.topics import ensure_topics

BUDGETS = "users: {tiers: {free: {usd: 1000}}}\nfeatures: {chat: {usd: 100000}}\n"


async def publish(bootstrap: str, n: int) -> tuple[float, Decimal]:
    await ensure_topics(bootstrap, ["spendstream.usage"], 4)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    rng = random.Random(1)
    total = Decimal(0)
    now = datetime.now(UTC).isoformat()
    started = time.perf_counter()
    futures = []
    for _ in range(n):
        user = f"user-{rng.randrange(5000)}"
        cost = Decimal(rng.randrange(1, 5000)) / 100000
        total += cost
        value = orjson.dumps({"schema": 1, "event_id": uuid.uuid4().hex, "ts": now,
                              "user_id": user, "feature": f"f{rng.randrange(30)}",
                              "model": "gpt-4o-mini", "input_tokens": rng.randrange(2000),
                              "output_tokens": rng.randrange(500), "cost_usd": str(cost)})
        futures.append(await producer.send("spendstream.usage", value, key=user.encode()))
    await asyncio.gather(*futures)
    await producer.stop()
    return n / (time.perf_counter() - started), total


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with EmbeddedBroker() as broker, EmbeddedRedis() as store:
        rate, total = asyncio.run(publish(broker.bootstrap, n))
        print(f"published {n} events at {rate:,.0f}/s")
        budgets = Path(tempfile.mkdtemp()) / "budgets.yaml"
        budgets.write_text(BUDGETS)
        env = {**os.environ, "SPENDSTREAM_KAFKA_URL": broker.url,
               "SPENDSTREAM_REDIS_URL": store.url, "SPENDSTREAM_BUDGETS": str(budgets)}
        started = time.perf_counter()
        worker = subprocess.Popen([sys.executable, "-P", "-m", "spendstream", "worker",
                                   "--log-level", "error"], env=env)
        r = redis.Redis.from_url(store.url)
        first = None
        try:
            while True:
                raw = r.get("spendstream:spend:global:day")
                done = orjson.loads(raw)["events"] if raw else 0
                if done and first is None:
                    first = time.perf_counter()
                if done >= n:
                    break
                if worker.poll() is not None:
                    raise SystemExit("worker died")
                time.sleep(0.1)
            end = time.perf_counter()
            spent = Decimal(orjson.loads(raw)["spent_usd"])
        finally:
            worker.terminate()
            worker.wait(30)
    assert first is not None
    print(f"worker: {n / (end - first):,.0f} events/s from first total to all final "
          f"({end - started:.1f}s including start-up)")
    print(f"global total {spent} == published {total}: {spent == total}")


if __name__ == "__main__":
    main()
