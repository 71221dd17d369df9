"""What each ``spendstream`` command does, once its arguments are parsed: one function a
command, taking the parsed arguments and the process's settings, returning the exit code.
Heavy imports happen inside them, so ``--help`` and the SDK-only install stay light."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from spendstream.cli.ledger import ledger_command, report_command, sql_command
from spendstream.errors import ConfigError, SpendstreamError

if TYPE_CHECKING:
    from redis import Redis

    from spendstream.contract import control
    from spendstream.settings import Settings

T = TypeVar("T")


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


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "worker": _worker, "up": _up, "demo": _demo, "init": _init, "check": _check, "flags": _flags,
    "disable": _disable, "enable": _enable, "audit": _audit, "estimate": _estimate,
    "health": _health, "report": report_command, "sql": sql_command, "ledger": ledger_command,
    "dashboard": _dashboard, "grant": _grant, "unblock": _grant,
}
