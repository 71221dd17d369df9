"""The worker's Kafka consumer asks for a short fetch wait (faust fixes 1500 ms).

The effect (cutoff flags 400 ms sooner on the embedded broker) is measured by the latency
phase of ``bench/throughput.py``; this checks the wiring that gives it, on the consumer
faust itself builds for the worker's app."""

from __future__ import annotations

from pathlib import Path

from spendstream.alerts import LogNotifier
from spendstream.domain.budgets import Budgets
from spendstream.settings import Settings
from spendstream.streams.app import build_app
from spendstream.streams.consumer import FETCH_MAX_WAIT_MS


async def test_the_worker_consumer_fetches_with_a_short_wait(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, state_dir=tmp_path)  # type: ignore[call-arg]
    app = build_app(settings, Budgets(), LogNotifier())
    thread = app.consumer._new_consumer_thread()
    consumer = thread._create_worker_consumer(app.transport)  # built, never started
    assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS < 1500
