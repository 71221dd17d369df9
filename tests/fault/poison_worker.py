"""``python -m tests.fault.poison_worker worker ...``: the real ``spendstream`` CLI, with
pricing that raises for the model :data:`POISON` (an exception while judging one event,
whatever its cause: nothing in the shipped worker is known to raise any more)."""

from __future__ import annotations

from typing import Any

from spendstream.cli import main
from spendstream.domain.pricing import Pricer

POISON = "poison-model"
_price_event = Pricer.price_event


def _poisoned(self: Pricer, event: Any) -> Any:
    if event.model == POISON:
        raise ArithmeticError(f"injected: {POISON} cannot be priced")
    return _price_event(self, event)


if __name__ == "__main__":
    Pricer.price_event = _poisoned  # type: ignore[method-assign]
    raise SystemExit(main())
