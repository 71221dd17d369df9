"""The operator's kill switch: a feature's cutoff flag, written by ``spendstream disable``
and the dashboard, removed by ``spendstream enable`` and the dashboard.

The value is the contract's flag value with unit ``switch``, so ``spendstream flags``, the
guard (:class:`FeatureDisabled`) and apps in other languages read one format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from spendstream.contract import keys

STAMP = "%Y-%m-%dT%H:%M:%SZ"
MAX_TTL = 366 * 86400
"""The longest timed switch (seconds): longer is a typo; no TTL means until enabled."""


def switch_key(prefix: str, feature: str) -> str:
    """The prefixed Redis key of a feature's cutoff flag."""
    return prefix + keys.cutoff_feature(feature)


@dataclass(frozen=True)
class SwitchWrite:
    """One ``SET key value [EX ttl]`` that disables a feature."""

    key: str
    value: dict[str, Any]
    ttl: int | None

    @property
    def raw(self) -> bytes:
        """The value as stored (JSON)."""
        return keys.encode(self.value)

    @property
    def until(self) -> str:
        """Human text of how long the switch holds."""
        end = self.value["window_end"]
        return f"until {end}" if end else "until it is enabled again"


def disable(prefix: str, feature: str, reason: str, ttl: int | None, now: datetime
            ) -> SwitchWrite:
    """The write that disables ``feature`` from ``now`` (for ``ttl`` seconds, or until
    enabled again)."""
    if not feature or len(feature) > 200:
        raise ValueError("a feature name is 1 to 200 characters")
    if ttl is not None and not 0 < ttl <= MAX_TTL:
        raise ValueError(f"the TTL must be positive and at most {MAX_TTL} seconds "
                         f"({MAX_TTL // 86400} days); none disables until enabled again")
    end = now + timedelta(seconds=ttl) if ttl else None
    value = keys.flag_value("feature", feature, reason, "cutoff", Decimal(0), Decimal(0),
                            "switch", now.strftime(STAMP), end.strftime(STAMP) if end else None)
    return SwitchWrite(switch_key(prefix, feature), value, ttl)
