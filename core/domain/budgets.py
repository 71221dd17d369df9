"""The budgets file: its validated shape and the loader that names a bad key.

Money is ``Decimal`` everywhere. Unknown keys are errors, so a typo such as
``usd_per_day`` fails at start instead of silently meaning "no budget".
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from spendstream.errors import ConfigError

Period = Literal["minute", "hour", "day", "month"]
Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: object) -> object:
    """``90``, ``"90s"``, ``"10m"``, ``"1h"``, ``"1d"`` as seconds; anything else is left
    for pydantic to reject with its own message."""
    if isinstance(value, str) and value[-1:] in _UNITS and value[:-1].strip():
        try:
            return float(value[:-1]) * _UNITS[value[-1]]
        except ValueError:
            return value
    return value


Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0, allow_inf_nan=False)]
"""Seconds, or a number with a unit: ``30s``, ``10m``, ``1h``, ``1d``."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Thresholds(_Strict):
    """Fractions of a budget: warn flag, cutoff flag, Slack alert (120% by default)."""

    warn: Annotated[Decimal, Field(gt=0)] = Decimal("0.8")
    cutoff: Annotated[Decimal, Field(gt=0)] = Decimal("1.0")
    alert: Annotated[Decimal, Field(gt=0)] = Decimal("1.2")
    pace: Annotated[Decimal, Field(gt=0)] = Decimal("1.2")
    """Month-to-date spend above this multiple of the pro-rated budget raises a pace warning."""
    drift: Annotated[Decimal, Field(gt=0)] = Decimal("0.10")
    """Token-inflation audit: alert when provider input counts differ from the apps' local
    counts by more than this fraction over a day."""

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.warn <= self.cutoff <= self.alert:
            raise ValueError("must satisfy warn <= cutoff <= alert")
        return self


class Limit(_Strict):
    """A budget in USD, in tokens, or both; whichever is reached first counts."""

    usd: Money | None = None
    tokens: Count | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Limit:
        if self.usd is None and self.tokens is None:
            raise ValueError("give usd, tokens or both")
        return self


class Rates(_Strict):
    """Per-user call limits: requests and tokens (prompt plus ``max_tokens``) per minute."""

    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Rates:
        if self.rpm is None and self.tpm is None:
            raise ValueError("give rpm, tpm or both")
        return self


class Tier(Limit):
    """A user tier: its daily budget, the models its users may call, its call limits."""

    allowed_models: tuple[str, ...] | None = None
    """Models this tier may use; ``None``: any. A caller's model outside the list is
    refused or tiered down (``users.on_model_not_allowed``)."""
    limits: Rates | None = None


class Users(_Strict):
    """Per-user budgets by tier, over one UTC day."""

    period: Literal["day"] = "day"
    default_tier: str = "free"
    tiers: dict[str, Tier] = Field(default_factory=dict)
    members: dict[str, str] = Field(default_factory=dict)
    on_model_not_allowed: Literal["refuse", "downgrade"] = "refuse"
    """A caller's explicit model outside the tier's ``allowed_models``: refuse the call
    (:class:`~spendstream.errors.ModelNotAllowed`) or use the feature's model for the tier."""

    @model_validator(mode="after")
    def _known_tiers(self) -> Users:
        if self.tiers and self.default_tier not in self.tiers:
            raise ValueError(
                f"default_tier {self.default_tier!r} is not one of the tiers {sorted(self.tiers)}"
            )
        for user, tier in self.members.items():
            if tier not in self.tiers:
                raise ValueError(
                    f"members.{user}: tier {tier!r} is not one of {sorted(self.tiers)}"
                )
        return self

    def tier_of(self, user_id: str) -> str:
        """The tier a user belongs to: an explicit member entry, else the default tier."""
        return self.members.get(user_id, self.default_tier)

    def limit_of(self, user_id: str) -> Tier | None:
        """The user's daily limit, or ``None`` when no tiers are configured."""
        return self.tiers.get(self.tier_of(user_id))


class Cache(_Strict):
    """Identical calls (model, messages, parameters that change the answer) are answered
    from Redis for ``ttl`` seconds."""

    ttl: Duration


class Feature(_Strict):
    """A category of calls (a product feature) with its own budget and call limits."""

    period: Period = "month"
    usd: Money | None = None
    tokens: Count | None = None
    max_input_tokens: Annotated[int, Field(gt=0)] | None = None
    max_output_tokens: Annotated[int, Field(gt=0)] | None = None
    model: str | None = None
    tier_models: dict[str, str] = Field(default_factory=dict)
    """A cheaper model per user tier, e.g. ``{free: gpt-4o-mini}``."""
    on_input_over: Literal["reject", "truncate", "trim_history"] = "trim_history"
    cutoff: bool = False
    """Write ``cutoff:feature:{name}`` at 100% of the budget (a hard cap); by default a
    feature budget is soft: warn at 80%, Slack alert at 120%, no cutoff."""
    limits: Rates | None = None
    """Per-user requests and tokens per minute on this feature."""
    cache: Cache | None = None
    """The response cache for this feature (off when absent)."""

    @property
    def limit(self) -> Limit | None:
        """The feature's spend limit for its period, if it has one."""
        if self.usd is None and self.tokens is None:
            return None
        return Limit(usd=self.usd, tokens=self.tokens)


class Global(_Strict):
    """Ceilings across every user and feature."""

    hourly_usd_alert: Money | None = None
    daily_usd: Money | None = None
    tokens_per_minute: Count | None = None


class Price(_Strict):
    """USD per one million tokens; overrides the bundled price table."""

    input: Money
    output: Money
    cached_input: Money | None = None
    cache_write_input: Money | None = None
    """Prompt-cache writes; the input rate when unset."""


class Reservations(_Strict):
    """Pre-call reservations (on when the section is present): ``admit`` holds each call's
    worst-case cost in Redis and refuses when spent + reserved + this call would pass the
    user's daily USD budget or ``global.daily_usd``."""

    ttl: Duration = 600.0
    """How long a reservation holds when its call is never recorded (a process died)."""
    hold: Duration = 5.0
    """How long a recorded call's actual cost keeps counting as reserved: until the
    worker's live spend includes it (flag latency, a few seconds)."""


class Budgets(_Strict):
    """The whole budgets file."""

    thresholds: Thresholds = Field(default_factory=Thresholds)
    users: Users = Field(default_factory=Users)
    features: dict[str, Feature] = Field(default_factory=dict)
    default_feature: str | None = None
    """The feature whose budget and limits a call naming an unknown feature gets (and
    is recorded under); ``None``: such a call is refused with
    :class:`~spendstream.errors.UnknownFeature`."""
    global_: Global = Field(default_factory=Global, alias="global")
    prices: dict[str, Price] = Field(default_factory=dict)
    reservations: Reservations | None = None

    @model_validator(mode="after")
    def _known_default(self) -> Budgets:
        if self.default_feature is not None and self.default_feature not in self.features:
            raise ValueError(f"default_feature {self.default_feature!r} is not one of the "
                             f"features {sorted(self.features)}")
        return self


def parse_budgets(data: object, source: str = "budgets") -> Budgets:
    """Validate already-parsed YAML/JSON data; errors name the key path and the problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    try:
        return Budgets.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling against docs/budgets.md)"
            lines.append(f"  {key}: {msg}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from e


class _RepeatedKey(Exception):
    """A mapping that names one key twice (YAML itself would keep the last value)."""

    def __init__(self, key: object, first: int, again: int) -> None:
        super().__init__(f"key {key!r} is given twice (line {first} and line {again})")
        self.key, self.first, self.again = key, first, again


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a repeated key: in a budgets file the second
    ``usd:`` of a tier would otherwise replace the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False
                          ) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then a key of base's: an override, not a repeat
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _RepeatedKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_budgets(path: Path) -> Budgets:
    """Read and validate a budgets YAML file; raise :class:`ConfigError` naming the bad key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(
            f"budgets file {path} not found: set SPENDSTREAM_BUDGETS or run "
            "`spendstream init` to write an example"
        ) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"budgets file {path} is not UTF-8 text (byte {e.start}); give "
                          "the YAML file, e.g. one `spendstream init` writes") from None
    except OSError as e:
        raise ConfigError(f"cannot read budgets file {path} ({e.strerror or e}); give a "
                          "readable YAML file") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except _RepeatedKey as e:
        raise ConfigError(f"{path}: {e}: give each key once (YAML would keep only the "
                          "last)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    return parse_budgets(data, source=str(path))
