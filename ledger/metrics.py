"""The ledger's Prometheus metrics, served on the worker's ``/metrics`` beside its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from spendstream.ledger.consumer import LedgerStats


class LedgerCollector(Collector):
    """Reads the ledger consumer's counters when scraped (nothing on the write path)."""

    def __init__(self, stats: LedgerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        s = self.stats
        yield CounterMetricFamily("spendstream_ledger_rows",
                                  "events the ledger handled (written, or already in)",
                                  value=s.rows)
        yield CounterMetricFamily("spendstream_ledger_rows_written",
                                  "rows that were new in the database", value=s.written)
        yield CounterMetricFamily("spendstream_ledger_outages",
                                  "times the ledger found PostgreSQL unavailable",
                                  value=s.outages)
        yield GaugeMetricFamily("spendstream_ledger_postgres_up",
                                "1 while the ledger's writes succeed, 0 during an outage",
                                value=0 if s.down_since is not None else 1)
