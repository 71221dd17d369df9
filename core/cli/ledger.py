"""The ledger's commands: ``report``, ``sql`` and ``ledger run`` / ``prune``, with their
parsers."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from spendstream.cli import argtypes
from spendstream.errors import ConfigError

if TYPE_CHECKING:
    from spendstream.settings import Settings

LEDGER_NOTE = """
The ledger is on when SPENDSTREAM_DATABASE_URL (a postgresql:// URL) is set for the
worker; `spendstream up` and `demo` start an embedded PostgreSQL and print its URL.
See docs/ledger.md."""


def ledger_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report``, ``sql`` and ``ledger`` (``run``, ``prune``) to ``sub``."""
    raw = argparse.RawDescriptionHelpFormatter
    r = sub.add_parser(
        "report", help="top features, top users, cost per user, model efficiency",
        formatter_class=raw, description="""\
Answer the four everyday questions for a period from the spend ledger's hourly rollup
(one row per hour, user, feature and model, so a month of millions of calls answers at
once): top features by spend, top users by spend, cost per user (spend / distinct
users) and model efficiency (average output tokens and average cost per call).
Sums are exact decimals. Unpriced calls (no price known) are counted in `unpriced`
and add nothing to spend; failed calls cost 0.

examples:
  spendstream report                              # this month (UTC)
  spendstream report --period today --feature chat
  spendstream report --period 2026-11-01..2026-11-15 --format csv > spend.csv
  spendstream report --user acct-7 --format json
""" + LEDGER_NOTE)
    r.add_argument("--period", metavar="PERIOD",
                   help="today, week (ISO, from Monday), month, or FROM..TO with both dates "
                   "included, e.g. 2026-11-01..2026-11-30 (default: month; UTC)")
    r.add_argument("--feature", help="only this feature")
    r.add_argument("--user", help="only this user id")
    r.add_argument("--top", type=argtypes.top, metavar="N",
                   help="rows in the top features and top users (default: 20)")
    r.add_argument("--format", choices=["table", "csv", "json"],
                   help="default: table")
    r.add_argument("--digest", action="store_true",
                   help="print the weekly digest instead: per feature the last 7 days' spend, "
                   "month to date against the pro-rated budget (over / on track / under) and "
                   "the top movers; the worker posts the same text to Slack at "
                   "SPENDSTREAM_DIGEST_AT (e.g. 'mon 09:00' UTC). Always the 7 days before "
                   "now, as text: it takes no other option")

    q = sub.add_parser(
        "sql", help="run one read-only SQL query against the ledger",
        formatter_class=raw, description="""\
Run one SQL statement in a READ ONLY transaction against the ledger's database and print
the result. Anything that writes is refused by PostgreSQL. The relation to query is
cost_logs: event_id, ts, date, user_id, feature, model, provider, input_tokens,
output_tokens, cached_input_tokens, cache_write_input_tokens, status, finish_reason,
tier, estimated, cache_hit, cost_usd (NULL: unpriced; 0: failed call), price_source
(event, table, override, failed, unpriced). spend_hourly is the hourly rollup.

examples:
  spendstream sql "SELECT feature, SUM(cost_usd) AS spend FROM cost_logs
                   WHERE date >= date_trunc('month', NOW()) GROUP BY feature
                   ORDER BY spend DESC"
  spendstream sql "SELECT model, COUNT(*) FROM cost_logs WHERE price_source = 'unpriced'
                   GROUP BY model" --format csv
""" + LEDGER_NOTE)
    q.add_argument("query", type=argtypes.query, help="one SQL statement")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--timeout", type=argtypes.seconds, default=60.0, metavar="SECONDS",
                   help="cancel the query after this long, at most 3600 (default: "
                   "%(default)s)")

    g = sub.add_parser("ledger", help="the ledger's own consumer; prune old months",
                       formatter_class=raw, description="The spend ledger's own consumer "
                       "process, and its maintenance." + LEDGER_NOTE)
    gsub = g.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    rn = gsub.add_parser(
        "run", help="write the ledger from its own process (scale it out)",
        formatter_class=raw, description="""\
Run the ledger's consumer alone in the foreground until SIGINT/SIGTERM: it reads the usage
topic in the ledger's consumer group (SPENDSTREAM_APP_ID + ".ledger") and writes every
event once into SPENDSTREAM_DATABASE_URL, as the worker's ledger thread does. Several of
these (and workers) in one group split the topic's partitions. Start the workers with
`spendstream worker --no-ledger` when the ledger runs on its own.

example:
  spendstream worker --no-ledger &
  spendstream ledger run &
  spendstream ledger run &   # a second one: half the partitions each
""" + LEDGER_NOTE)
    rn.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    pr = gsub.add_parser(
        "prune", help="drop whole months before a date", formatter_class=raw,
        description="""\
Retention: drop every monthly partition of the ledger that ends on or before DATE (only
whole months: a month DATE falls inside is kept), and the hourly rollup of those months,
in one transaction. Dropping a partition is instant, whatever its size. Prints what was
dropped.

example:
  spendstream ledger prune --before 2026-06-01   # drops May 2026 and everything older
""" + LEDGER_NOTE)
    pr.add_argument("--before", required=True, type=argtypes.day, metavar="DATE",
                    help="a date like 2026-06-01")
    pr.add_argument("--dry-run", action="store_true", help="say what would be dropped")



def _database_url(settings: Settings) -> str | None:
    return None if settings.database_url is None else settings.database_url.get_secret_value()


def report_command(args: argparse.Namespace, settings: Settings) -> int:
    """``spendstream report``: the four everyday questions, or ``--digest``."""
    from spendstream.extras import require

    given = [f"--{name}" for name in ("period", "format", "feature", "user", "top")
             if getattr(args, name) is not None]
    if args.digest and given:
        raise ConfigError(f"report --digest takes no {', '.join(given)}: the digest is "
                          "always the 7 days before now, as text (what the worker posts "
                          f"to Slack); drop {' and '.join(given)}, or drop --digest for "
                          "the report")

    require("worker", "report")  # psycopg
    from datetime import UTC, datetime

    from spendstream.ledger.queries import Filters, connect, report
    from spendstream.ledger.report import parse_period, render_report

    if args.digest:
        from spendstream.dashboard.digest import build, render
        from spendstream.domain.budgets import load_budgets

        budgets = load_budgets(settings.budgets)
        with connect(_database_url(settings), read_only=True) as conn:
            print(render(build(conn, budgets, datetime.now(UTC))))
        return 0
    start, end = parse_period(args.period or "month", datetime.now(UTC))
    with connect(_database_url(settings), read_only=True) as conn:
        result = report(conn, Filters(start, end, args.feature, args.user), args.top or 20)
    print(render_report(result, args.format or "table"))
    return 0


def sql_command(args: argparse.Namespace, settings: Settings) -> int:
    """``spendstream sql``: one query in a read-only transaction, as a reader."""
    from spendstream.extras import require

    require("worker", "sql")  # psycopg
    from spendstream.ledger.queries import connect, read_as_reader, run
    from spendstream.ledger.report import render_result

    with connect(_database_url(settings), read_only=True) as conn:
        try:
            read_as_reader(conn)
            conn.execute(f"SET LOCAL statement_timeout = {int(args.timeout * 1000)}")
            result = run(conn, args.query)
        finally:
            conn.rollback()  # nothing a query did is kept (large objects, sequences...)
    print(render_result(result, args.format))
    return 0


def ledger_command(args: argparse.Namespace, settings: Settings) -> int:
    """``spendstream ledger run`` (the ledger's own consumer) or ``prune``."""
    from spendstream.extras import require

    require("worker", "ledger")  # psycopg
    if args.ledger_command == "run":
        from spendstream.domain.budgets import load_budgets
        from spendstream.runner import run_ledger

        if settings.database_url is None:  # before the budgets: the first thing to fix
            raise ConfigError("no ledger database: set SPENDSTREAM_DATABASE_URL to a "
                              "postgresql:// URL, see docs/ledger.md")
        return run_ledger(settings, load_budgets(settings.budgets), args.log_level)
    from spendstream.ledger.queries import connect, partitions, prune
    from spendstream.ledger.schema import next_month

    with connect(_database_url(settings)) as conn:
        if args.dry_run:
            names = [n for n, m in partitions(conn) if next_month(m) <= args.before]
        else:
            names = prune(conn, args.before)
        kept = [n for n, _ in partitions(conn)] if not args.dry_run else []
    verb = "would drop" if args.dry_run else "dropped"
    if not names:
        print(f"nothing to drop: no month of the ledger ends on or before {args.before}")
    else:
        print(f"{verb} {len(names)} partition(s) and their hourly rollup: {', '.join(names)}")
    if kept:
        print(f"kept: {', '.join(kept)}")
    return 0
