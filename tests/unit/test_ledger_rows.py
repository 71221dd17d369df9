"""The ledger row, partition naming and the report's periods and formats: pure, no I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import pytest

from spendstream.contract.event import UsageEvent
from spendstream.contract.ledger import COLUMNS, LedgerRow, ledger_row
from spendstream.domain.budgets import Price
from spendstream.domain.pricing import Pricer
from spendstream.errors import ConfigError
from spendstream.ledger.queries import Result
from spendstream.ledger.report import parse_period, render_result
from spendstream.ledger.schema import (
    month_start,
    next_month,
    partition_ddl,
    partition_month,
    partition_name,
)

PRICER = Pricer({"house-model": Price(input=Decimal("2.50"), output=Decimal("10.00"))})


def event(**kw: object) -> UsageEvent:
    base: dict[str, object] = {"user_id": "acct-1", "feature": "chat", "model": "house-model",
                               "input_tokens": 1000, "output_tokens": 200,
                               "ts": "2026-11-23T10:00:00Z"}
    return UsageEvent.model_validate({**base, **kw})


@pytest.mark.parametrize(("kw", "cost", "source"), [
    ({}, Decimal("0.0045"), "override"),                      # 1000 x 2.50 + 200 x 10.00 / 1M
    ({"cost_usd": "0.0123"}, Decimal("0.0123"), "event"),     # the producer's price wins
    ({"status": "error"}, Decimal(0), "failed"),              # failed calls are free
    ({"status": "error", "cost_usd": "5"}, Decimal(0), "failed"),
    ({"model": "no-such-model-x"}, None, "unpriced"),         # NULL, never a silent 0
])
def test_cost_and_price_source(kw: dict[str, object], cost: Decimal | None, source: str) -> None:
    row = ledger_row(event(**kw), PRICER, "free")
    assert (row.cost_usd, row.price_source) == (cost, source)
    assert row.cost_usd is None or isinstance(row.cost_usd, Decimal)


def test_table_price_is_the_workers_price() -> None:
    e = event(model="gpt-4o", provider="openai", cached_input_tokens=400)
    row = ledger_row(e, PRICER)
    assert row.price_source == "table"
    assert row.cost_usd == PRICER.price("gpt-4o", "openai", 1000, 200, 400, e.ts)
    assert row.cached_input_tokens == 400


def test_row_fields_follow_columns_and_date_is_the_utc_day() -> None:
    row = ledger_row(event(ts="2026-11-30T23:30:00-02:00", finish_reason="len\x00gth",
                           estimated=True), PRICER, "pro")
    assert LedgerRow._fields == COLUMNS
    assert row.ts == datetime(2026, 12, 1, 1, 30, tzinfo=UTC)
    assert row.date == date(2026, 12, 1)  # the partition key: the UTC day, not the local one
    assert row.tier == "pro" and row.estimated is True and row.cache_hit is False
    assert row.finish_reason == "len\ufffdgth"  # PostgreSQL text cannot hold NUL
    assert row.cache_write_input_tokens == 0
    assert ledger_row(event(cache_hit=True, input_tokens=0, output_tokens=0), PRICER
                      ).cache_hit is True


@pytest.mark.parametrize(("kw", "saved"), [
    ({"cache_hit": True, "saved_usd": "0.0123"}, Decimal("0.0123")),  # what the event says
    ({"cache_hit": True}, None),                  # a hit whose saving is unknown: NULL, not 0
    ({"saved_usd": "0.5"}, None),                 # not a hit: nothing was saved
    ({}, None),
])
def test_saved_usd_is_the_savings_of_a_cache_hit(kw: dict[str, object], saved: Decimal | None
                                                  ) -> None:
    row = ledger_row(event(input_tokens=0, output_tokens=0, cost_usd="0", **kw), PRICER)
    assert row.saved_usd == saved
    assert row.cost_usd == 0  # a hit costs nothing; the saving is not spend


@pytest.mark.parametrize(("day", "name", "first", "after"), [
    (date(2026, 11, 30), "spend_ledger_y2026m11", date(2026, 11, 1), date(2026, 12, 1)),
    (date(2026, 12, 31), "spend_ledger_y2026m12", date(2026, 12, 1), date(2027, 1, 1)),
    (date(1970, 1, 1), "spend_ledger_y1970m01", date(1970, 1, 1), date(1970, 2, 1)),
])
def test_partition_naming(day: date, name: str, first: date, after: date) -> None:
    assert partition_name(day) == name
    assert partition_month(name) == month_start(day) == first
    assert next_month(day) == after
    assert partition_ddl(day) == (
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF spend_ledger "
        f"FOR VALUES FROM ('{first}') TO ('{after}')")


@pytest.mark.parametrize("name", ["spend_hourly", "spend_ledger", "spend_ledger_y2026m13",
                                  "spend_ledger_y26m11", "other_y2026m11"])
def test_other_names_are_not_partitions(name: str) -> None:
    assert partition_month(name) is None


NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(("text", "start", "end"), [
    ("today", "2026-11-26", "2026-11-27"),
    ("week", "2026-11-23", "2026-11-30"),
    ("month", "2026-11-01", "2026-12-01"),
    ("2026-10-01..2026-10-31", "2026-10-01", "2026-11-01"),
    ("2026-11-05..2026-11-05", "2026-11-05", "2026-11-06"),
])
def test_periods(text: str, start: str, end: str) -> None:
    assert parse_period(text, NOW) == (datetime.fromisoformat(start).replace(tzinfo=UTC),
                                       datetime.fromisoformat(end).replace(tzinfo=UTC))


@pytest.mark.parametrize(("text", "says"), [
    ("yesterday", "use today, week, month or FROM..TO"),
    ("2026-11-01..", "must be dates"),
    ("2026-11-05..2026-11-01", "TO is before FROM"),
])
def test_bad_periods_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_period(text, NOW)


RESULT = Result(["feature", "spend", "avg_cost"],
                [("chat", Decimal("0.17648"), Decimal("0.000240000000000000")),
                 ("odd", None, None)])


def test_formats_keep_exact_decimals_and_null() -> None:
    assert render_result(RESULT, "table").splitlines() == [
        "feature  spend    avg_cost", "-------  -------  --------",
        "chat     0.17648  0.00024", "odd"]
    assert render_result(RESULT, "csv").splitlines() == [
        "feature,spend,avg_cost", "chat,0.17648,0.00024", "odd,,"]
    assert orjson.loads(render_result(RESULT, "json")) == [
        {"feature": "chat", "spend": "0.17648", "avg_cost": "0.00024"},
        {"feature": "odd", "spend": None, "avg_cost": None}]


def test_database_url_setting() -> None:
    from spendstream.settings import load_settings

    assert load_settings(database_url="").database_url is None  # compose's empty default
    url = load_settings(database_url="postgresql://u:pw@db:5432/x").database_url
    assert url is not None and "pw" not in repr(url)  # a secret, never printed
    with pytest.raises(ConfigError, match="SPENDSTREAM_DATABASE_URL.*postgresql://"):
        load_settings(database_url="mysql://db/x")


def test_without_a_database_url_the_worker_has_no_ledger_and_no_psycopg() -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "from spendstream.domain.budgets import parse_budgets\n"
            "from spendstream.runner import ledger_services\n"
            "from spendstream.settings import Settings\n"
            "budgets = parse_budgets({'users': {'tiers': {'free': {'usd': 1}}}})\n"
            "assert ledger_services(Settings(database_url=''), budgets) == []\n"
            "print('psycopg' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_ledger_keeps_exactly_what_the_worker_counts() -> None:
    """An event dated beyond the horizon is the worker's to dead-letter, so the ledger
    skips it; an event without an event_id gets the worker's id from its coordinates."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    import orjson

    from spendstream.contract.decode import origin_id
    from spendstream.domain.budgets import parse_budgets
    from spendstream.ledger.consumer import LedgerConsumer

    now = datetime.now(UTC)
    base = {"schema": 1, "user_id": "u", "feature": "chat", "model": "gpt-4o",
            "input_tokens": 10, "output_tokens": 2, "cost_usd": "0.01"}
    records = [
        SimpleNamespace(topic="t", partition=0, offset=7, value=orjson.dumps(
            {**base, "ts": now.isoformat()})),
        SimpleNamespace(topic="t", partition=0, offset=8, value=orjson.dumps(
            {**base, "event_id": "far", "ts": (now + timedelta(days=2)).isoformat()})),
    ]
    consumer = LedgerConsumer("postgresql://unused", "127.0.0.1:9", "t", "g",
                              parse_budgets({}), max_future_seconds=300)
    rows = consumer.rows(records)
    assert [r.event_id for r in rows] == [origin_id(("t", 0, 7))]


def test_an_event_that_cannot_be_priced_is_skipped_not_fatal() -> None:
    """The worker dead-letters an event whose pricing raises; the ledger skips it and
    keeps the rest of the batch (no poison pill here either)."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    import orjson

    from spendstream.domain.budgets import parse_budgets
    from spendstream.ledger.consumer import LedgerConsumer

    class Exploding:
        def price_event(self, event: object) -> object:
            raise ArithmeticError("boom")

    ts = datetime.now(UTC).isoformat()
    records = [SimpleNamespace(topic="t", partition=0, offset=i, value=orjson.dumps(
        {"schema": 1, "event_id": f"e{i}", "ts": ts, "user_id": "u", "feature": "chat",
         "model": "gpt-4o", "input_tokens": 1})) for i in range(2)]
    consumer = LedgerConsumer("postgresql://unused", "127.0.0.1:9", "t", "g",
                              parse_budgets({}), pricer=Exploding())  # type: ignore[arg-type]
    assert consumer.rows(records) == []
