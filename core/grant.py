"""Sending a grant or unblock: one control record on the usage topic, keyed by the user.

``spendstream grant`` / ``unblock`` and the dashboard's write actions build the record
with :mod:`spendstream.contract.control` and send it here. The worker applies it in order
with the user's events (``spendstream.streams.grants``); the ledger stores it in
``grants``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from spendstream.contract.control import Control
from spendstream.domain.budgets import Budgets
from spendstream.errors import ServiceUnavailable

SEND_TIMEOUT = 15.0
"""Seconds to wait for the broker to acknowledge the record."""


async def send_control(bootstrap: str, topic: str, control: Control,
                       kafka_kwargs: dict[str, Any] | None = None,
                       timeout: float = SEND_TIMEOUT) -> tuple[int, int]:
    """Send ``control`` and wait until every in-sync replica has it; its (partition,
    offset). :class:`ServiceUnavailable` saying what to check when the broker does not
    take it."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    # No idempotent producer (not every Kafka-protocol broker has it): a retried send
    # that lands twice is the same grant_id, which the worker and the ledger apply once.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                request_timeout_ms=int(timeout * 1000), **(kafka_kwargs or {}))
    try:
        await asyncio.wait_for(producer.start(), timeout)
        meta = await asyncio.wait_for(
            producer.send_and_wait(topic, control.to_json(), key=control.key), timeout)
    except (KafkaError, OSError, TimeoutError) as e:
        raise ServiceUnavailable(
            f"the {control.control} was not sent: Kafka at {bootstrap} did not take it "
            f"({type(e).__name__}); check SPENDSTREAM_KAFKA_URL and that the broker is up. "
            f"Sending the same grant id again is safe (it is applied once)") from e
    finally:
        await producer.stop()
    return meta.partition, meta.offset


def no_effect(control: Control, budgets: Budgets) -> str | None:
    """A one-line warning when the grant raises a budget the user's tier does not have
    (tokens on a USD-only tier, USD on a tokens-only one, any amount without user tiers):
    the worker applies it and nothing changes."""
    if control.control != "grant":
        return None
    tier = budgets.users.tier_of(control.user_id)
    limit = budgets.users.limit_of(control.user_id)
    if limit is None:
        return (f"the budgets file has no user tiers, so this grant changes nothing for "
                f"{control.user_id}")
    idle = [what for what, given, has in (("tokens", control.tokens, limit.tokens),
                                          ("usd", control.usd, limit.usd))
            if given is not None and has is None]
    if not idle:
        return None
    return (f"{control.user_id}'s tier {tier} has no {' or '.join(idle)} budget, so the "
            f"granted {' and '.join(idle)} change nothing for them")


def describe(control: Control) -> str:
    """One line saying what the worker will do with ``control``."""
    if control.control == "unblock":
        return (f"unblock {control.user_id} (grant {control.grant_id}): the worker grants what "
                f"they have spent today ({control.day}), so their cutoff clears and they "
                "have their daily budget again")
    amounts = " and ".join(x for x in (f"${control.usd:f}" if control.usd else "",
                                       f"{control.tokens} tokens" if control.tokens else "")
                           if x)
    days = (f"today ({control.day})" if len(control.days) == 1
            else f"every day {control.day} to {control.days[-1]}")
    return (f"grant {control.grant_id}: {control.user_id}'s daily budget raised by {amounts} "
            f"{days}; the worker applies it in order with their events and clears the "
            "cutoff when they are under the raised budget")
