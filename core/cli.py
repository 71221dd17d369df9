"""The ``spendstream`` command: worker, up, demo, init, check, flags."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from spendstream.errors import SpendstreamError

if TYPE_CHECKING:
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

Settings come from environment variables (SPENDSTREAM_KAFKA_URL, SPENDSTREAM_REDIS_URL,
SPENDSTREAM_BUDGETS, SPENDSTREAM_TOPIC, SPENDSTREAM_REDIS_PREFIX, SLACK_WEBHOOK_URL,
SLACK_BOT_TOKEN, SLACK_CHANNEL, SLACK_API_URL) or a file given with --settings.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spendstream", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", type=Path, metavar="FILE",
                   help="a KEY=value env file read before the environment (e.g. .env)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    w = sub.add_parser("worker", help="run the stream workers against the configured Kafka/Redis",
                       description="Run both stream stages until SIGINT/SIGTERM. Start more "
                       "workers with the same settings to scale out: they share one consumer "
                       "group and split the partitions.")
    w.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])

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
    d.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")

    i = sub.add_parser("init", help="write an example budgets.yaml",
                       description="Write the documented example budgets file.")
    i.add_argument("path", nargs="?", type=Path, default=Path("budgets.yaml"))
    i.add_argument("--force", action="store_true", help="overwrite an existing file")

    c = sub.add_parser("check", help="validate a budgets file and summarise it",
                       description="Exit 0 and print a summary when the budgets file is valid; "
                       "exit 2 naming each bad key otherwise.")
    c.add_argument("path", nargs="?", type=Path, help="defaults to SPENDSTREAM_BUDGETS")

    sub.add_parser("flags", help="list active cutoff and warn flags in Redis",
                   description="Scan SPENDSTREAM_REDIS_URL for cutoff/warn keys and print "
                   "each with its reason, spend and time to live.")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spendstream`` console script."""
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        from spendstream.settings import load_settings

        settings = load_settings(args.settings)
        return int(COMMANDS[args.command](args, settings) or 0)
    except SpendstreamError as e:
        print(f"spendstream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.producers.budgets import load_budgets
    from spendstream.runner import run_worker

    budgets = load_budgets(settings.budgets)
    return run_worker(settings, budgets, args.log_level)


def _budgets_for_up(settings: Settings) -> Path:
    from spendstream.examples import EXAMPLE_BUDGETS
    from spendstream.producers.budgets import load_budgets
    from spendstream.stack import say

    path = Path(settings.budgets)
    if path.exists():
        load_budgets(path)  # fail here, naming the key, not in the worker
        return path.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="spendstream-")) / "budgets.yaml"
    tmp.write_text(EXAMPLE_BUDGETS)
    say(f"no {path}: using the example budgets (run `spendstream init` to write one to edit)")
    return tmp


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.stack import Stack, say

    stack = Stack(settings, _budgets_for_up(settings), args.log_level)
    try:
        stack.start()
        say("up. Point your apps at it with:")
        say(f"  {stack.env_hint()}")
        say("Ctrl-C to stop.")
        return stack.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.demo import run_demo

    return run_demo(settings, keep_running=args.keep_running, timeout=args.timeout)


def _init(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.examples import EXAMPLE_BUDGETS

    if args.path.exists() and not args.force:
        print(f"{args.path} exists; use --force to overwrite", file=sys.stderr)
        return 1
    args.path.write_text(EXAMPLE_BUDGETS)
    print(f"wrote {args.path}; check it with: spendstream check {args.path}")
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from spendstream.producers.budgets import load_budgets

    path = args.path or settings.budgets
    b = load_budgets(path)
    print(f"{path}: valid")
    for name, tier in b.users.tiers.items():
        print(f"  user tier {name}: usd {tier.usd} tokens {tier.tokens} per UTC day")
    for name, f in b.features.items():
        print(f"  feature {name}: usd {f.usd} tokens {f.tokens} per {f.period}"
              f"{' (hard cutoff)' if f.cutoff else ''}")
    g = b.global_
    print(f"  global: hourly alert {g.hourly_usd_alert}, daily cap {g.daily_usd}, "
          f"tokens/minute {g.tokens_per_minute}")
    print(f"  price overrides: {', '.join(b.prices) or 'none'}")
    return 0


def _flags(args: argparse.Namespace, settings: Settings) -> int:
    import redis
    from redis.exceptions import RedisError

    from spendstream.errors import ServiceUnavailable

    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=3)
    found = 0
    try:
        for pattern in ("cutoff:*", "warn:*"):
            for key in sorted(client.scan_iter(settings.redis_prefix + pattern, count=1000)):
                value, ttl = client.get(key), client.ttl(key)
                text = value.decode() if isinstance(value, bytes) else (value or "")
                print(f"{key.decode()}  ttl={ttl}s  {text}")
                found += 1
    except RedisError as e:
        raise ServiceUnavailable(f"Redis unreachable ({type(e).__name__}); check "
                                 "SPENDSTREAM_REDIS_URL") from e
    if not found:
        print("no active flags")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "worker": _worker, "up": _up, "demo": _demo, "init": _init, "check": _check, "flags": _flags,
}
