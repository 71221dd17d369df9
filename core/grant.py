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
        gid = control.grant_id
        raise ServiceUnavailable(
            f"the {control.control} {gid} was not sent: Kafka at {bootstrap} did not take it "
            f"({type(e).__name__}); check SPENDSTREAM_KAFKA_URL and that the broker is up, "
            f"then send it again with the same grant id (--id {gid}; grant_id in the API): "
            "the worker applies a grant id once, so a send that did land counts once") from e
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


ONCE = ("the worker applies each grant id once, so resending an id it applied before "
        "changes nothing (a new amount needs a new id)")


def describe(control: Control) -> str:
    """One line saying what was sent and what the worker will do with ``control``: sent,
    not applied (the worker ignores a grant id it applied before)."""
    if control.control == "unblock":
        return (f"unblock {control.user_id} sent (grant id {control.grant_id}): if they are "
                f"cut off now, the worker grants them their tier's whole daily budget again "
                f"for today ({control.day}), so the cutoff clears (nothing for a user not cut "
                f"off); {ONCE}")
    amounts = " and ".join(x for x in (f"${control.usd:f}" if control.usd else "",
                                       f"{control.tokens} tokens" if control.tokens else "")
                           if x)
    days = (f"today ({control.day})" if len(control.days) == 1
            else f"every day {control.day} to {control.days[-1]}")
    return (f"grant {control.grant_id} sent: {control.user_id}'s daily budget to be raised by "
            f"{amounts} {days}, in order with their events, clearing the cutoff when they "
            f"are under the raised budget; {ONCE}")
