"""A bare faust agent: the ceiling any faust-based worker can reach on this machine.

    python bench/_faust_ceiling.py KAFKA_URL TOPIC PARTITIONS N RESULT_FILE APP_ID DATADIR

The agent does what the spendstream worker's input side does and nothing else: it takes
batches (``stream.take_events(2000, within=0.25)``) and ``orjson.loads`` each value
(counting the events of packed records). No tables, no state, no Redis. After ``N``
events it writes ``{"events", "seconds", "startup"}`` to RESULT_FILE (timed from its
first batch) and keeps running until the benchmark stops it. Started by
``bench/throughput.py``; not meant to be run by hand.
"""

from __future__ import annotations

import os
import sys
import time

import faust
import orjson
from _kafka import events_in

STARTED = time.perf_counter()


def build(kafka_url: str, topic: str, partitions: int, n: int, result: str, app_id: str,
          datadir: str) -> faust.App:
    """The app: one topic, one agent; faust's defaults apart from the group timings, which
    are the worker's (they shorten the join, not the reading)."""
    app = faust.App(app_id, broker=kafka_url, store="memory://", web_enabled=False,
                    consumer_auto_offset_reset="earliest", topic_partitions=partitions,
                    datadir=datadir, broker_rebalance_timeout=5.0, broker_session_timeout=10.0,
                    broker_heartbeat_interval=1.0)
    source = app.topic(topic, key_serializer="raw", value_serializer="raw",
                       partitions=partitions)
    seen = {"count": 0, "first": 0.0}

    @app.agent(source)
    async def read(stream: faust.StreamT) -> None:
        async for events in stream.take_events(2000, within=0.25):  # type: ignore[attr-defined]
            if not seen["count"]:
                seen["first"] = time.perf_counter()
            count = sum(events_in(ev.value) for ev in events)
            done = seen["count"] < n <= seen["count"] + count
            seen["count"] += count
            if done:
                now = time.perf_counter()
                tmp = result + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(orjson.dumps({"events": seen["count"],
                                          "seconds": now - seen["first"],
                                          "startup": seen["first"] - STARTED}))
                os.replace(tmp, result)

    return app


def main() -> None:
    """Parse the arguments and run the agent until SIGTERM."""
    url, topic, partitions, n, result, app_id, datadir = sys.argv[1:8]
    app = build(url, topic, int(partitions), int(n), result, app_id, datadir)
    worker = faust.Worker(app, loglevel="error", quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
