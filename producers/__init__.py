"""What applications install: the usage event, budgets and the emitter.

The emitters are imported on first use, so ``import spendstream.producers`` (and the
worker, which only needs the event model) does not pay for loading the Kafka client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spendstream.contract.decode import decode_event
from spendstream.contract.event import MalformedEvent, UsageEvent
from spendstream.domain.budgets import Budgets, load_budgets, parse_budgets

if TYPE_CHECKING:
    from spendstream.producers._delivery import EmitterStats
    from spendstream.producers.emitter import Emitter
    from spendstream.producers.sync import SyncEmitter

__all__ = ["Budgets", "Emitter", "EmitterStats", "MalformedEvent", "SyncEmitter", "UsageEvent",
           "decode_event", "load_budgets", "parse_budgets"]

_LAZY = {
    "Emitter": "spendstream.producers.emitter",
    "EmitterStats": "spendstream.producers._delivery",
    "SyncEmitter": "spendstream.producers.sync",
}


def __getattr__(name: str) -> Any:
    """Import the emitter classes when first asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
