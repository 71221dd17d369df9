"""The ``spendstream`` command's parser: every command, its options and its ``--help``."""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

from spendstream.cli import argtypes
from spendstream.cli.ledger import ledger_parsers

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

def _version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spendstream")
    except PackageNotFoundError:
        from spendstream import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command and its ``--help``."""
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
    d.add_argument("--timeout", type=argtypes.seconds, default=120.0, metavar="SECONDS",
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
    h.add_argument("--timeout", type=argtypes.seconds, default=3.0, metavar="SECONDS",
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
    x.add_argument("--ttl", type=argtypes.duration, metavar="DURATION",
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
    db.add_argument("--port", type=argtypes.port, default=8642, help="port (default: %(default)s)")
    _grant_parsers(sub)
    _audit_parser(sub)
    _estimate_parser(sub)
    ledger_parsers(sub)
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
    g.add_argument("--tokens", type=argtypes.count, metavar="N", help="tokens to add to the daily "
                   "token budget (for tiers that limit tokens)")
    g.add_argument("--until", type=argtypes.day, metavar="DATE", help="last UTC day the grant "
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
    a.add_argument("--tolerance", type=argtypes.fraction, default=Decimal("0.02"),
                   metavar="FRACTION",
                   help="allowed drift as a fraction of the local count (default: "
                   "%(default)s = 2%%)")
    a.add_argument("--timeout", type=argtypes.seconds, default=30.0, metavar="SECONDS",
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
    m.add_argument("--calls-per-day", type=argtypes.count, required=True, metavar="N",
                   help="model calls a day")
    m.add_argument("--input-tokens", type=argtypes.count, required=True, metavar="N",
                   help="prompt tokens of an average call (cached ones included)")
    m.add_argument("--output-tokens", type=argtypes.count, required=True, metavar="N",
                   help="completion tokens of an average call")
    which = m.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="price this model (e.g. gpt-4o)")
    which.add_argument("--feature", help="use this feature's model and budget from the "
                       "budgets file")
    m.add_argument("--cached-fraction", type=argtypes.fraction, default=Decimal(0),
                   metavar="FRACTION",
                   help="share of the input read from the provider's prompt cache, 0 to 1 "
                   "(default: 0); priced at the model's cached-input rate")
    m.add_argument("--budgets", type=Path, metavar="PATH",
                   help="budgets file for `prices:` and features (default: "
                   "SPENDSTREAM_BUDGETS, used if it exists)")
