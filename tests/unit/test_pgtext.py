"""`spendstream sql` prints values as PostgreSQL does (table, CSV) and as real JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendstream.ledger.pgtext import array_text, interval_text
from spendstream.ledger.queries import Result
from spendstream.ledger.report import render_result

# What psycopg loads for SELECT '{"a":1}'::jsonb d, ARRAY[1,2] e, 'x'::bytea f,
# interval '1 day' g, true h, '[1,2]'::jsonb i, 1.50::numeric j, ts k (types: their OIDs).
ROW = ({"a": 1}, [1, 2], b"x", timedelta(days=1), True, [1, 2], Decimal("1.50"),
       datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
RESULT = Result(list("defghijk"), [ROW, (None,) * 8],
                (3802, 1007, 17, 1186, 16, 3802, 1700, 1184))


def test_csv_and_table_show_what_postgresql_prints() -> None:
    assert render_result(RESULT, "csv").splitlines() == [
        "d,e,f,g,h,i,j,k",
        '"{""a"": 1}","{1,2}",\\x78,1 day,true,"[1, 2]",1.50,2026-11-23T10:00:00.000000Z',
        ",,,,,,,"]
    assert render_result(RESULT, "table").splitlines()[2].split() == [
        '{"a":', "1}", "{1,2}", "\\x78", "1", "day", "true", "[1,", "2]", "1.50",
        "2026-11-23T10:00:00.000000Z"]


def test_json_is_real_json_with_structure_kept() -> None:
    assert json.loads(render_result(RESULT, "json")) == [
        {"d": {"a": 1}, "e": [1, 2], "f": "\\x78", "g": "1 day", "h": True, "i": [1, 2],
         "j": "1.50", "k": "2026-11-23T10:00:00.000000Z"},
        dict.fromkeys("defghijk")]


def test_jsonb_keeps_integers_beyond_64_bits() -> None:
    big = Result(["d"], [({"n": 2**70},)], (3802,))
    assert json.loads(render_result(big, "json")) == [{"d": {"n": 2**70}}]


@pytest.mark.parametrize(("value", "printed"), [
    (["a b", None, '"q', "", "null", "x"], '{"a b",NULL,"\\"q","","null",x}'),
    ([[1, 2], [3, 4]], "{{1,2},{3,4}}"),
    ([True, False], "{t,f}"),
    ([b"x"], '{"\\\\x78"}'),
    ([Decimal("0.10")], "{0.10}"),
])
def test_arrays_print_as_postgresql_array_literals(value: list[object], printed: str) -> None:
    assert array_text(value) == printed


def test_an_array_of_jsonb_quotes_each_document() -> None:
    assert array_text([{"a": 1}, None], json_items=True) == '{"{\\"a\\": 1}",NULL}'


@pytest.mark.parametrize(("value", "printed"), [
    (timedelta(0), "00:00:00"),
    (timedelta(days=1), "1 day"),
    (timedelta(days=2, hours=3), "2 days 03:00:00"),
    (timedelta(hours=-3), "-03:00:00"),
    (timedelta(days=-1), "-1 days"),
    (timedelta(days=-1, hours=-3), "-1 days -03:00:00"),
    (timedelta(seconds=1, microseconds=500000), "00:00:01.5"),
])
def test_intervals_print_as_postgresql_does(value: timedelta, printed: str) -> None:
    assert interval_text(value) == printed
