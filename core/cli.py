"""The ``spendstream`` command: worker, up, demo, init, check, flags, disable, enable,
grant, unblock, audit, estimate, report, sql, ledger."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from spendstream.errors import ConfigError, SpendstreamError
from spendstream.switch import MAX_TTL

if TYPE_CHECKING:
    from redis import Redis

    from spendstream.contract import control
    from spendstream.settings import Settings

DESCRIPTION = """\
spendstream puts a ceiling on what LLM features cost.

Apps publish one usage event per model call to Kafka; the worker aggregates spend in
event-time windows, writes cutoff/warn flags to Redis and sends Slack alerts.

Start here:
  spendstream demo            embedded broker + Redis + worker + synthetic traffic
  spendstream up              the same without traffic: point your apps at it
  spendstream init            write an example budgets.yaml to edit
  spendstream check           validate budgets.yaml and print what it means
  spendstream worker          production: run against SPENDSTREAM_KAFKA_URL / _REDIS_URL
  spendstream flags           list active cutoff and warn flags in Redis
  spendstream health          is the worker on this host counting? (for health checks)
  spendstream disable FEATURE kill switch: guards refuse the feature (enable undoes it)
  spendstream grant USER      raise one user's budget for today (--usd 1); unblock USER
  spendstream audit           does a provider count more prompt tokens than it was sent?
  spendstream estimate        monthly cost of a feature from calls/day and tokens/call
  spendstream report          who spent what, on which feature and model (the ledger)
  spendstream sql "SELECT..." read-only SQL over the ledger's cost_logs
  spendstream dashboard       the spend dashboard and its HTTP API (port 8642)

Settings come from environment variables or a KEY=value file given with --settings.
The main ones:
{settings}
Slack: SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN with SLACK_CHANNEL. The dashboard's write
actions: SPENDSTREAM_DASHBOARD_TOKEN. Every setting, with its default: docs/contract.md
(#settings).
"""

SETTINGS = """\
  SPENDSTREAM_KAFKA_URL          broker(s) (default: kafka://localhost:9092)
  SPENDSTREAM_REDIS_URL          flag store (default: redis://localhost:6379/0)
  SPENDSTREAM_BUDGETS            budgets file (default: ./budgets.yaml)
  SPENDSTREAM_DATABASE_URL       postgresql://...: turns the spend ledger on
  SPENDSTREAM_APP_ID             names the consumer group and internal topics
                                 (default: spendstream)
  SPENDSTREAM_METRICS_PORT       the worker's /metrics and /healthz (default: 9464;
                                 0: off)
  SPENDSTREAM_GROUP_INSTANCE_ID  a stable name per worker replica (static membership): a
                                 restarted worker takes its partitions back at once
"""
"""The settings a deployment sets first; docs/contract.md lists every one."""

T = TypeVar("T")


def _version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spendstream")
    except PackageNotFoundError:
        from spendstream import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spendstream",
                                description=DESCRIPTION.replace("{settings}", SETTINGS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", type=Path, metavar="FILE",
                   help="a KEY=value env file read before the environment (e.g. .env)")
    p.add_argument("--version", action="version", version=f"spendstream {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    w = sub.add_parser("worker", help="run the stream workers against the configured Kafka/Redis",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run both stream stages until SIGINT/SIGTERM. Start "
                       "more workers with the same settings\nto scale out: they share one "
                       "consumer group and split the partitions.\n\nSettings (environment "
                       "variables, or a file given with --settings):\n" + SETTINGS +
                       "Slack: SLACK_WEBHOOK_URL, or SLACK_BOT_TOKEN with SLACK_CHANNEL.\n"
                       "Every setting, with its default: docs/contract.md (#settings).")
    w.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    w.add_argument("--no-ledger", action="store_true",
                   help="do not write the spend ledger from this worker even with "
                   "SPENDSTREAM_DATABASE_URL set (it runs as `spendstream ledger run`)")

    u = sub.add_parser("up", help="embedded broker + Redis + worker in the foreground",
                       description="Start the embedded Kafka broker (Tansu, memory only), a "
                       "Redis-compatible server and a worker. Ctrl-C stops everything.")
    u.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"], help="faust's log level")

    d = sub.add_parser("demo", help="`up` plus synthetic traffic: see a warning, a cutoff "
                       "and an alert happen", description="Runs `up` with the demo budgets and "
                       "synthetic traffic, and reports each warning, cutoff and alert as it "
                       "happens. Exits 0 once all three were seen (within about a minute).")
    d.add_argument("--keep-running", action="store_true",
                   help="stay up after the demo succeeded, until Ctrl-C")
    d.add_argument("--timeout", type=_seconds, default=120.0, metavar="SECONDS",
                   help="give up after this many seconds")

    i = sub.add_parser("init", help="write an example budgets.yaml",
                       description="Write the documented example budgets file.")
    i.add_argument("path", nargs="?", type=Path, default=Path("budgets.yaml"))
    i.add_argument("--force", action="store_true", help="overwrite an existing file")

    c = sub.add_parser("check", help="validate a budgets file and summarise it",
                       description="Exit 0 and print a summary when the budgets file is valid; "
                       "exit 2 naming each bad key otherwise.")
    c.add_argument("path", nargs="?", type=Path, help="defaults to SPENDSTREAM_BUDGETS")

    h = sub.add_parser("health", help="is the local worker counting? (exit 0 ready, 1 not)",
                       description="Ask the worker on this host (its /healthz on "
                       "SPENDSTREAM_METRICS_PORT) whether it holds partitions, has recovered "
                       "its state and is counting. For container health checks: exit 0 when "
                       "ready, 1 when not, with the reason.")
    h.add_argument("--host", default="127.0.0.1", help="where the worker listens "
                   "(default: %(default)s)")
    h.add_argument("--timeout", type=_seconds, default=3.0, metavar="SECONDS",
                   help="seconds to wait for an answer")
    sub.add_parser("flags", help="list active cutoff and warn flags in Redis",
                   description="Scan SPENDSTREAM_REDIS_URL for cutoff/warn keys and print "
                   "each with its reason, spend and time to live.")
    x = sub.add_parser("disable", help="kill switch: refuse every call of a feature",
                       description="Write the feature's cutoff flag, so every guard refuses "
                       "its calls with FeatureDisabled within its cache time (1 s by default).")
    x.add_argument("feature")
    x.add_argument("--reason", default="disabled by an operator",
                   help="shown to callers in the FeatureDisabled error")
    x.add_argument("--ttl", type=_duration, metavar="DURATION",
                   help="re-enable automatically after this long (e.g. 90, 30m, 2h, 1d); "
                   "default: until `spendstream enable`")
    e = sub.add_parser("enable", help="undo `disable` (clears the feature's cutoff flag)",
                       description="Delete the feature's cutoff flag, whether an operator "
                       "or the feature's hard budget cap set it.")
    e.add_argument("feature")
    db = sub.add_parser(
        "dashboard", help="the spend dashboard and its HTTP API",
        description="Serve the dashboard page and its HTTP API (OpenAPI at /api/openapi.json): "
        "spend from the ledger (SPENDSTREAM_DATABASE_URL), flags and live spend from Redis, "
        "alerts from the alert topic. Write actions (the kill switch: disable and enable a "
        "feature; per user: grant more budget today and unblock) need "
        "SPENDSTREAM_DASHBOARD_TOKEN, given as a bearer token; without it the page is "
        "read-only. See docs/dashboard.md.")
    db.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    db.add_argument("--port", type=_port, default=8642, help="port (default: %(default)s)")
    _grant_parsers(sub)
    _audit_parser(sub)
    _estimate_parser(sub)
    _ledger_parsers(sub)
    return p


GRANT_NOTE = """
A grant travels as a control record on the usage topic (SPENDSTREAM_TOPIC), keyed by the
user, so the worker applies it in order with the user's events, exactly once (by its
grant id), and keeps it through restarts. The worker clears the user's cutoff flag when
their spend is under the raised budget, shows the raised budget and what is left on
spend:user:USER, raises one `grant` alert, and the ledger stores it in `grants`
(`spendstream report` lists it). Sending the same --id twice applies it once.
See docs/dashboard.md#grants."""


def _grant_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser(
        "grant", help="raise one user's daily budget (today, or through --until)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Raise USER's daily budget by --usd and/or --tokens for today (UTC),\n"
        "or every day through --until. Support's everyday request: a user who hit\n"
        "their budget gets a dollar more today.\n\n"
        "  spendstream grant acct-7 --usd 1\n"
        "  spendstream grant acct-7 --usd 0.50 --tokens 20000 --until 2026-11-30 \\\n"
        "      --reason 'ticket 4411'\n" + GRANT_NOTE)
    g.add_argument("user", help="the user id, as the app sends it in usage events")
    g.add_argument("--usd", metavar="AMOUNT", help="USD to add to the daily budget, e.g. 1 "
                   "or 0.50 (an exact decimal, at most 6 decimal places)")
    g.add_argument("--tokens", type=_count, metavar="N", help="tokens to add to the daily "
                   "token budget (for tiers that limit tokens)")
    g.add_argument("--until", type=_date, metavar="DATE", help="last UTC day the grant "
                   "applies (YYYY-MM-DD, at most 31 days ahead); default: today only")
    u = sub.add_parser(
        "unblock", help="clear one user's cutoff: their daily budget again, for today",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Clear USER's cutoff for today (UTC): if they are cut off, the worker\n"
        "grants, in order with their events, what gives them their tier's whole daily\n"
        "budget again; past it they are cut off again. A user not cut off gets nothing.\n\n"
        "  spendstream unblock acct-7 --reason 'cut off by a retry loop we fixed'\n"
        + GRANT_NOTE)
    u.add_argument("user", help="the user id, as the app sends it in usage events")
    for x in (g, u):
        x.add_argument("--reason", default="", help="why (kept in the ledger and the alert)")
        x.add_argument("--by", default="cli", help="who asked (default: %(default)s)")
        x.add_argument("--id", dest="grant_id", metavar="GRANT_ID", help="the grant's id "
                       "(default: a new one); resending the same id is applied once")


LEDGER_NOTE = """
The ledger is on when SPENDSTREAM_DATABASE_URL (a postgresql:// URL) is set for the
worker; `spendstream up` and `demo` start an embedded PostgreSQL and print its URL.
See docs/ledger.md."""


def _ledger_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    r.add_argument("--top", type=_top, metavar="N",
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
    q.add_argument("query", type=_query, help="one SQL statement")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS",
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
    pr.add_argument("--before", required=True, type=_date, metavar="DATE",
                    help="a date like 2026-06-01")
    pr.add_argument("--dry-run", action="store_true", help="say what would be dropped")


def _audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser(
        "audit", help="token-inflation self-test against an OpenAI-compatible endpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter, description="""\
Send a fixed four-message chat (max_tokens=1, so it costs a fraction of a cent) and set
the provider's usage.prompt_tokens against spendstream's local tiktoken count of the same
messages. A provider or proxy that bills more prompt tokens than the text holds shows
up as INFLATED. Exit 0 within the tolerance, 1 beyond it, 2 when the call fails.

The local count is exact only when the model's tiktoken encoding is available offline
(cl100k_base always is: gpt-4, gpt-3.5-turbo); otherwise the verdict is indicative.

example:
  OPENAI_API_KEY=sk-... spendstream audit --base-url https://api.openai.com/v1 --model gpt-4
  spendstream audit --base-url http://localhost:8000/v1 --model gpt-4 --tolerance 0.05""")
    a.add_argument("--base-url", required=True, metavar="URL",
                   help="the API's base URL, where /chat/completions is served "
                   "(usually ending in /v1)")
    a.add_argument("--model", required=True, help="the model name the endpoint expects")
    a.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="the environment variable holding the API key (default: "
                   "%(default)s); never printed. Unset is fine for a local server")
    a.add_argument("--tolerance", type=_fraction, default=Decimal("0.02"), metavar="FRACTION",
                   help="allowed drift as a fraction of the local count (default: "
                   "%(default)s = 2%%)")
    a.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="give up on the endpoint after this long (default: %(default)s)")


def _estimate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser(
        "estimate", help="monthly cost of a feature from calls/day and tokens per call",
        formatter_class=argparse.RawDescriptionHelpFormatter, description="""\
Price one average call with the worker's own prices (the budgets file's `prices:`
first, then the bundled genai-prices table) and multiply it out: per day, and per
30-day month, in USD rounded to cents. With --feature, the model is the feature's
`model:` in the budgets file and the estimate is set against the feature's budget
(a shorter period than a month gets the day's cost spread evenly over it).

examples:
  spendstream estimate --calls-per-day 20000 --input-tokens 1200 --output-tokens 300 \\
      --model gpt-4o-mini
  spendstream estimate --calls-per-day 20000 --input-tokens 1200 --output-tokens 300 \\
      --feature chat --cached-fraction 0.5 --budgets budgets.yaml""")
    m.add_argument("--calls-per-day", type=_count, required=True, metavar="N",
                   help="model calls a day")
    m.add_argument("--input-tokens", type=_count, required=True, metavar="N",
                   help="prompt tokens of an average call (cached ones included)")
    m.add_argument("--output-tokens", type=_count, required=True, metavar="N",
                   help="completion tokens of an average call")
    which = m.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="price this model (e.g. gpt-4o)")
    which.add_argument("--feature", help="use this feature's model and budget from the "
                       "budgets file")
    m.add_argument("--cached-fraction", type=_fraction, default=Decimal(0), metavar="FRACTION",
                   help="share of the input read from the provider's prompt cache, 0 to 1 "
                   "(default: 0); priced at the model's cached-input rate")
    m.add_argument("--budgets", type=Path, metavar="PATH",
                   help="budgets file for `prices:` and features (default: "
                   "SPENDSTREAM_BUDGETS, used if it exists)")


def _duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = int(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90, 30m, 2h or 1d"
                                         ) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the TTL must be positive")
    if seconds > MAX_TTL:
        raise argparse.ArgumentTypeError(f"{text} is more than {MAX_TTL // 86400} days; "
                                         "leave --ttl out to disable until `spendstream enable`")
    return seconds


MAX_SECONDS = 3600.0
"""The longest --timeout: a query or a call that needs more is a mistake, not a wait."""


def _seconds(text: str) -> float:
    """A positive, finite number of seconds up to :data:`MAX_SECONDS`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds like 30 or 2.5"
                                         ) from None
    if not 0 < value <= MAX_SECONDS:  # False for nan too
        raise argparse.ArgumentTypeError(f"{text} seconds: give more than 0 and at most "
                                         f"{MAX_SECONDS:g}")
    return value


def _port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port: give 1 to 65535")
    return value


MAX_TOP = 100_000


def _top(text: str) -> int:
    """Rows of a top-N section, 1 to :data:`MAX_TOP`."""
    value = _count(text)
    if not 1 <= value <= MAX_TOP:
        raise argparse.ArgumentTypeError(f"{text} rows: give 1 to {MAX_TOP}")
    return value


def _query(text: str) -> str:
    """One SQL statement; an empty one is a mistake (quoting), not a query of nothing."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the query is empty; give one SQL statement in quotes, e.g. "
            "spendstream sql \"SELECT count(*) FROM cost_logs\"")
    return text


def _date(text: str) -> date:
    """A date like ``2026-06-01``."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-06-01") from None


def _fraction(text: str) -> Decimal:
    """A decimal from 0 to 1, e.g. ``0.02``."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number like 0.02") from None
    if not value.is_finite() or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1 (0.02 = 2%)")
    return value


def _count(text: str) -> int:
    """A whole number, zero or more."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spendstream`` console script."""
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        from spendstream.settings import load_settings

        settings = load_settings(args.settings)
        code = int(COMMANDS[args.command](args, settings) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except SpendstreamError as e:
        print(f"spendstream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head -1`): stop quietly, as the Python docs advise;
        # stdout goes to devnull so the exit's own flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.domain.budgets import load_budgets
    from spendstream.extras import require

    require("worker", "worker")
    from spendstream.runner import run_worker

    budgets = load_budgets(settings.budgets)
    return run_worker(settings, budgets, args.log_level, ledger=not args.no_ledger)


def _budgets_for_up(settings: Settings) -> Path:
    from spendstream.domain.budgets import load_budgets
    from spendstream.examples import EXAMPLE_BUDGETS
    from spendstream.stack import say

    path = Path(settings.budgets)
    if path.exists() or "budgets" in settings.model_fields_set:
        # A file named explicitly (SPENDSTREAM_BUDGETS) must exist: never run on examples.
        load_budgets(path)  # fail here, naming the key or the missing file, not in the worker
        return path.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="spendstream-")) / "budgets.yaml"
    tmp.write_text(EXAMPLE_BUDGETS)
    say(f"no {path}: using the example budgets (run `spendstream init` to write one to edit)")
    return tmp


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.extras import require

    require("local", "up")
    from spendstream.stack import Stack, say

    stack = Stack(settings, _budgets_for_up(settings), args.log_level)
    try:
        stack.start()
        say(f"up. The dashboard: {stack.dashboard_url}. Point your apps at it with:")
        say(f"  {stack.env_hint()}")
        say("Ctrl-C to stop.")
        return stack.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.extras import require

    require("local", "demo")
    from spendstream.demo import run_demo

    return run_demo(settings, keep_running=args.keep_running, timeout=args.timeout)


def _init(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.examples import EXAMPLE_BUDGETS

    if args.path.exists() and not args.force:
        print(f"{args.path} exists; use --force to overwrite", file=sys.stderr)
        return 1
    folder = args.path.parent
    if not folder.is_dir():
        raise ConfigError(f"cannot write {args.path}: the directory {folder} does not exist; "
                          "create it first or give a path in an existing one")
    try:
        args.path.write_text(EXAMPLE_BUDGETS)
    except OSError as e:
        raise ConfigError(f"cannot write {args.path} ({e.strerror}); give another path"
                          ) from None
    print(f"wrote {args.path}; check it with: spendstream check {args.path}")
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.domain.budgets import load_budgets

    path = args.path or settings.budgets
    b = load_budgets(path)
    print(f"{path}: valid")
    for name, tier in b.users.tiers.items():
        print(f"  user tier {name}: {_limit(tier.usd, tier.tokens)} per UTC day")
    for name, f in b.features.items():
        print(f"  feature {name}: {_limit(f.usd, f.tokens)} per {f.period}"
              f"{' (hard cutoff)' if f.cutoff else ''}")
    g = b.global_
    print(f"  global: hourly alert {_usd(g.hourly_usd_alert) or 'none'}, daily cap "
          f"{_usd(g.daily_usd) or 'none'}, tokens/minute {g.tokens_per_minute or 'no limit'}")
    print(f"  price overrides: {', '.join(b.prices) or 'none'}")
    return 0


def _usd(value: Decimal | None) -> str | None:
    """Money as the budgets file gives it, in plain notation: ``$0.50``, ``$100``."""
    return None if value is None else f"${value:f}"


def _limit(usd: Decimal | None, tokens: int | None) -> str:
    """``$1 and 20000 tokens``, ``$1 (no token budget)``, ``20000 tokens (no USD budget)``."""
    if usd is not None and tokens is not None:
        return f"{_usd(usd)} and {tokens} tokens"
    if usd is not None:
        return f"{_usd(usd)} (no token budget)"
    return f"{tokens} tokens (no USD budget)"


def _flags(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.contract import keys

    def active(client: Redis) -> list[str]:
        lines = []
        for pattern in keys.FLAG_PATTERNS:
            for key in sorted(client.scan_iter(settings.redis_prefix + pattern, count=1000)):
                value, ttl = client.get(key), client.ttl(key)
                text = value.decode() if isinstance(value, bytes) else (value or "")
                lines.append(f"{key.decode()}  ttl={ttl}s  {text}")
        return lines

    lines = _redis_call(settings, active)
    print("\n".join(lines) if lines else "no active flags")
    return 0


def _health(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import urllib.error
    import urllib.request

    url = f"http://{args.host}:{settings.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    except (OSError, ValueError) as e:
        print(f"not ready: no worker answers at {url} ({e})")
        return 1
    partitions = ", ".join(map(str, body.get("partitions", []))) or "none"
    print(f"{'ready' if body.get('ready') else 'not ready'}: {body.get('reason')} "
          f"(partitions: {partitions})")
    return 0 if body.get("ready") else 1


def _dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.extras import require

    require("worker", "dashboard")  # aiohttp, psycopg, mode (the digest)
    from spendstream.dashboard.server import run_dashboard
    from spendstream.domain.budgets import load_budgets

    return run_dashboard(settings, load_budgets(settings.budgets), args.host, args.port)


def _redis_call(settings: Settings, action: Callable[[Redis], T]) -> T:
    import redis
    from redis.exceptions import AuthenticationError, RedisError

    from spendstream.errors import ConfigError, ServiceUnavailable
    from spendstream.redact import redact_url, scrub, url_password

    url = settings.redis_url.get_secret_value()
    try:
        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    except ValueError as e:  # its message may quote the URL
        raise ConfigError(f"SPENDSTREAM_REDIS_URL is not a Redis URL ({redact_url(url)}): "
                          f"{scrub(str(e), url, url_password(url))}") from None
    # Only the URL's host part is shown; the client's messages never hold the password,
    # and are scrubbed anyway in case a future version quotes the URL.
    where = redact_url(url)
    try:
        return action(client)
    except AuthenticationError as e:
        detail = scrub(str(e), url, url_password(url))
        raise ServiceUnavailable(
            f"Redis at {where} refused the credentials in SPENDSTREAM_REDIS_URL ({detail}); "
            "check the password (redis://:PASSWORD@host:port/db) or user") from e
    except RedisError as e:
        detail = scrub(str(e), url, url_password(url))
        raise ServiceUnavailable(f"Redis unreachable at {where} ({type(e).__name__}: "
                                 f"{detail}); check SPENDSTREAM_REDIS_URL and that Redis "
                                 "is running") from e
    finally:
        client.close()


def _disable(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from spendstream.switch import disable

    w = disable(settings.redis_prefix, args.feature, args.reason, args.ttl, datetime.now(UTC))
    _redis_call(settings, lambda r: r.set(w.key, w.raw, ex=w.ttl))
    until = w.until if w.ttl else "until `spendstream enable`"
    print(f"disabled {args.feature} {until}: guards refuse its calls within their cache time")
    return 0


def _enable(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.switch import switch_key

    key = switch_key(settings.redis_prefix, args.feature)
    removed = _redis_call(settings, lambda r: r.delete(key))
    print(f"enabled {args.feature}" if removed else f"{args.feature} was not disabled")
    return 0


def _grant(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import logging

    from spendstream.contract import control
    from spendstream.grant import describe, send_control
    from spendstream.kafka_auth import kafka_client_kwargs

    try:
        if args.command == "unblock":
            record = control.unblock(args.user, reason=args.reason, by=args.by,
                                     grant_id=args.grant_id)
        else:
            record = control.grant(args.user, args.usd, args.tokens or None, args.until,
                                   reason=args.reason, by=args.by, grant_id=args.grant_id)
    except ValueError as e:
        raise ConfigError(f"{args.command}: {e}") from None
    # aiokafka logs each failed connection; the one error below says it and what to do.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    warning = _grant_warning(record, settings)
    if warning:
        print(f"spendstream: warning: {warning}", file=sys.stderr)
    partition, offset = asyncio.run(send_control(
        settings.bootstrap_servers, settings.topic, record, kafka_client_kwargs(settings)))
    print(describe(record))
    print(f"grant id {record.grant_id}: on {settings.topic} partition {partition} "
          f"offset {offset}")
    return 0


def _grant_warning(record: control.Control, settings: Settings) -> str | None:
    """Whether the grant changes nothing for the user's tier, by the budgets file when it
    is here (the CLI may run where the worker's budgets are not: then nothing is said)."""
    from spendstream.domain.budgets import load_budgets
    from spendstream.grant import no_effect

    if not Path(settings.budgets).is_file():
        return None
    try:
        budgets = load_budgets(settings.budgets)
    except SpendstreamError:
        return None
    return no_effect(record, budgets)


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import SecretStr

    from spendstream.audit import run_audit

    # The key's variable is named on the command line, so it cannot be a settings field;
    # it is read here, at the entry point, and travels only as a SecretStr.
    key = os.environ.get(args.api_key_env) or None
    if key is None:
        print(f"note: ${args.api_key_env} is not set; sending no key (fine for a local "
              "server, a hosted API will refuse)", file=sys.stderr)
    return run_audit(args.base_url, args.model, SecretStr(key) if key else None,
                     f"${args.api_key_env}", args.tolerance, args.timeout)


def _estimate(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from spendstream.estimate import Usage, run_estimate

    # The pricer's "unpriced" warning speaks of events; this command's own error says it better.
    logging.getLogger("spendstream.domain.pricing").setLevel(logging.ERROR)

    usage = Usage(args.calls_per_day, args.input_tokens, args.output_tokens,
                  args.cached_fraction)
    return run_estimate(usage, model=args.model, feature=args.feature, budgets=args.budgets,
                        default_budgets=Path(settings.budgets))


def _database_url(settings: Settings) -> str | None:
    return None if settings.database_url is None else settings.database_url.get_secret_value()


def _report(args: argparse.Namespace, settings: Settings) -> int:
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


def _sql(args: argparse.Namespace, settings: Settings) -> int:
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


def _ledger(args: argparse.Namespace, settings: Settings) -> int:
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


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "worker": _worker, "up": _up, "demo": _demo, "init": _init, "check": _check, "flags": _flags,
    "disable": _disable, "enable": _enable, "audit": _audit, "estimate": _estimate,
    "health": _health, "report": _report, "sql": _sql, "ledger": _ledger,
    "dashboard": _dashboard, "grant": _grant, "unblock": _grant,
}
