"""Price one model call in USD: config overrides first, then genai-prices' bundled table.

A pure core: values in, ``Decimal`` out, no I/O. The table is the snapshot bundled in the
installed ``genai-prices`` wheel; its optional auto-updater (``genai_prices.UpdatePrices``,
a background thread that fetches prices over HTTP) is never started here, so pricing never
touches the network. An unknown model is *unpriced* (``None``), never a silent $0.

genai-prices counts cache reads and cache writes as part of ``input_tokens`` (it raises if
they exceed ``input_tokens``), which is also the usage event's contract, so counts pass
through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, Literal, Protocol

import msgspec
from genai_prices import Usage, data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, TieredPrices, calc_unit_price

from spendstream.domain.budgets import Price

logger = logging.getLogger(__name__)

Source = Literal["event", "override", "table", "failed", "unpriced"]

_MTOK = Decimal(1_000_000)
_ZERO = Decimal(0)
_PER = 1_000_000
"""Table rates are per million tokens."""
_MAX_CACHED = 4096
"""Model names come from events; bound the per-model caches so junk names cannot grow them."""

# Price keys the fast path computes itself, and keys whose usage is always 0 for a usage
# event (it reports only text input, cached input and output tokens), so they add nothing.
# Any other key sends that price card through genai-prices' own (slower) calculation.
_TOKEN_KEYS = frozenset({"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"})
_FAST_KEYS = _TOKEN_KEYS | {"requests_kcount"}
_IDLE_KEYS = frozenset({
    "cache_write_1h_mtok", "web_searches_kcount",
    "storage_searches_kcount", "input_audio_mtok", "output_audio_mtok",
    "input_image_mtok", "output_image_mtok", "cache_audio_read_mtok",
    "cache_image_read_mtok", "input_video_mtok", "output_video_mtok",
    "output_reasoning_mtok", "output_citation_mtok",
})


class Call(Protocol):
    """What pricing reads of one model call: a usage event
    (:class:`spendstream.contract.event.UsageEvent`) is one."""

    @property
    def ok(self) -> bool: ...
    @property
    def cost_usd(self) -> Decimal | None: ...
    @property
    def model(self) -> str: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def cache_write_input_tokens(self) -> int: ...
    @property
    def ts(self) -> datetime: ...


class Priced(msgspec.Struct, frozen=True, gc=False):
    """The cost of one usage event and where it came from.

    ``priced`` is False only for an unknown model: its cost is 0 *and* it must be counted
    and alerted on as unpriced, never taken as free. ``source`` is one of ``event`` (the
    producer sent ``cost_usd``), ``override`` (budgets file ``prices``), ``table``
    (genai-prices), ``failed`` (status other than ok: free) or ``unpriced``. One is made
    per event: a struct, since a frozen dataclass sets each field through
    ``object.__setattr__``.
    """

    cost: Decimal
    priced: bool
    source: Source


@dataclass(frozen=True, slots=True)
class _Rates:
    """A price card reduced to what a usage event can use; ``None`` rate = not charged."""

    input: Decimal | TieredPrices | None
    output: Decimal | TieredPrices | None
    cache_read: Decimal | TieredPrices | None
    cache_write: Decimal | TieredPrices | None
    per_request: Decimal | None


_SLOW: Final = "slow"
"""The card has a price key the fast path does not know: let genai-prices compute it."""
_UNPRICEABLE: Final = "unpriceable"
"""The card prices no tokens at all (e.g. audio hours): tokens would silently cost $0."""

_Card = _Rates | Literal["slow", "unpriceable"]


def _compile(price: ModelPrice) -> _Card:
    keys = {k: v for k, v in vars(price).items() if not k.startswith("_") and v is not None}
    if keys and not keys.keys() & _TOKEN_KEYS:
        return _UNPRICEABLE
    if keys.keys() - _FAST_KEYS - _IDLE_KEYS:
        return _SLOW
    per_request = keys.get("requests_kcount")
    if per_request is not None and not isinstance(per_request, Decimal):
        return _SLOW
    return _Rates(
        input=keys.get("input_mtok"),
        output=keys.get("output_mtok"),
        cache_read=keys.get("cache_read_mtok"),
        cache_write=keys.get("cache_write_mtok"),
        per_request=None if per_request is None else per_request / 1000,
    )


def _override_cost(p: Price, input_tokens: int, output_tokens: int, cached: int,
                   written: int = 0) -> Decimal:
    # `is None`, not `or`: a cached_input rate of 0 (free cache reads) is a real price.
    cached_rate = p.input if p.cached_input is None else p.cached_input
    write_rate = p.input if p.cache_write_input is None else p.cache_write_input
    return (
        (input_tokens - cached - written) * p.input + cached * cached_rate
        + written * write_rate + output_tokens * p.output
    ) / _MTOK


def _valid_count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


class Pricer:
    """Prices usage: per-model overrides first, then genai-prices' bundled table.

    Build one per process (or per budgets reload) and reuse it: it caches the model
    resolution per ``(model, provider)`` so the hot path is a dict lookup and a few
    ``Decimal`` multiplications. It never raises and never reaches the network.
    """

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._overrides: dict[str, Price] = dict(overrides or {})
        self._folded: dict[str, Price] = {}
        for name, price in self._overrides.items():
            self._folded.setdefault(name.casefold(), price)
        # Pinned once so one Pricer prices consistently for its whole life.
        self._snapshot = data_snapshot.get_snapshot()
        self._resolved: dict[tuple[str, str | None], Price | ModelInfo | None] = {}
        self._cards: dict[int, tuple[ModelPrice, _Card]] = {}

    def price(
        self,
        model: str,
        provider: str | None,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        at: datetime | None = None,
        cache_write_input_tokens: int = 0,
    ) -> Decimal | None:
        """The USD cost of one call, or ``None`` when it cannot be priced (unknown model).

        ``cached_input_tokens`` and ``cache_write_input_tokens`` are part of
        ``input_tokens``. ``at`` picks time-dependent
        prices (default: now; naive means UTC). Invalid input (negative counts, cached
        above input, non-string model) is unpriced too: ``None``, never an exception.
        """
        priced = self._price(model, provider, input_tokens, output_tokens, cached_input_tokens, at,
                             cache_write_input_tokens)
        return None if priced is None else priced[0]

    def price_event(self, event: Call) -> Priced:
        """Price a usage event: failed calls are free, the event's own ``cost_usd`` wins."""
        if not event.ok:
            return Priced(_ZERO, True, "failed")
        if event.cost_usd is not None:
            return Priced(event.cost_usd, True, "event")
        priced = self._price(
            event.model, event.provider, event.input_tokens, event.output_tokens,
            event.cached_input_tokens, event.ts, event.cache_write_input_tokens,
        )
        if priced is None:
            return Priced(_ZERO, False, "unpriced")
        return Priced(priced[0], True, priced[1])

    def _price(
        self, model: str, provider: str | None, input_tokens: int, output_tokens: int,
        cached: int, at: datetime | None, written: int = 0,
    ) -> tuple[Decimal, Source] | None:
        # The annotations are what callers should pass; the checks are for what they may
        # pass anyway (decoded JSON, a mistaken call), which must be unpriced, not a crash.
        if not (
            isinstance(model, str)
            and (provider is None or isinstance(provider, str))
            # plain ints (the decoder's) in one comparison; anything else checked one by one
            and ((type(input_tokens) is type(output_tokens) is type(cached) is type(written)
                  is int and min(input_tokens, output_tokens, cached, written) >= 0)
                 or all(map(_valid_count, (input_tokens, output_tokens, cached, written))))
            and (at is None or isinstance(at, datetime))
        ):
            return None
        if cached + written > input_tokens:
            return None  # breaks the event contract; genai-prices would raise too
        try:
            rule = self._resolve(model, provider)
            if rule is None:
                return None
            if isinstance(rule, Price):
                return (_override_cost(rule, input_tokens, output_tokens, cached, written),
                        "override")
            cost = self._table_cost(rule, input_tokens, output_tokens, cached, at, written)
            return None if cost is None else (cost, "table")
        except Exception:  # a bug or odd data in the table must not stop the worker
            logger.exception("pricing %r (provider %r) failed; counting it as unpriced", model,
                             provider)
            return None

    def _resolve(self, model: str, provider: str | None) -> Price | ModelInfo | None:
        key = (model, provider)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        rule: Price | ModelInfo | None = self._overrides.get(model)
        if rule is None:
            rule = self._folded.get(model.casefold())
        if rule is None:
            rule = self._lookup(model, provider)
        if len(self._resolved) >= _MAX_CACHED:
            self._resolved.clear()
        self._resolved[key] = rule
        return rule

    def _lookup(self, model: str, provider: str | None) -> ModelInfo | None:
        try:
            return self._snapshot.find_provider_model(model, None, provider, None)[1]
        except (LookupError, ValueError):
            pass
        if provider is not None:
            # A provider id genai-prices does not know (a gateway, a proxy) or one that does
            # not list the model: the model's own provider's price beats "unpriced".
            try:
                info = self._snapshot.find_provider_model(model, None, None, None)[1]
            except (LookupError, ValueError):
                pass
            else:
                logger.info("model %r is not priced under provider %r; using %r's price as %r",
                            model, provider, model, info.id)
                return info
        logger.warning("model %r (provider %r) has no price: counted as unpriced, not $0; "
                       "add it under `prices:` in the budgets file", model, provider)
        return None

    def _table_cost(
        self, info: ModelInfo, input_tokens: int, output_tokens: int, cached: int,
        at: datetime | None, written: int = 0,
    ) -> Decimal | None:
        if at is None:
            at = datetime.now(UTC)
        elif at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        price = info.get_prices(at)
        # get_prices returns one of the model's stored card objects, so identity is a stable key.
        entry = self._cards.get(id(price))
        if entry is None or entry[0] is not price:
            if len(self._cards) >= _MAX_CACHED:
                self._cards.clear()
            entry = self._cards[id(price)] = (price, _compile(price))
            if entry[1] is _UNPRICEABLE:
                logger.warning("model %r is priced per %s, not per token: counted as unpriced; "
                               "add it under `prices:` in the budgets file", info.id,
                               ", ".join(k for k, v in vars(price).items() if v is not None))
        card = entry[1]
        if card is _UNPRICEABLE:  # identity: `==` would call the dataclass's __eq__ per event
            return None
        if card is _SLOW:
            usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                          cache_read_tokens=cached, cache_write_tokens=written)
            return price.calc_price(usage)["total_price"]
        assert isinstance(card, _Rates)
        # The same arithmetic as genai-prices: cache reads and writes are slices of input
        # priced at their own rates when the card has them; tiers are chosen by total input.
        uncached = input_tokens
        cost = _ZERO
        # calc_unit_price's arithmetic inlined for flat rates (the common card): the same
        # operations in the same order, so the same Decimal, without four calls per event.
        rate = card.cache_read
        if rate is not None:
            uncached -= cached
            cost += (rate * cached / _PER if type(rate) is Decimal
                     else calc_unit_price(rate, cached, input_tokens, _PER))
        rate = card.cache_write
        if rate is not None:
            uncached -= written
            cost += (rate * written / _PER if type(rate) is Decimal
                     else calc_unit_price(rate, written, input_tokens, _PER))
        rate = card.input
        if rate is not None:
            cost += (rate * uncached / _PER if type(rate) is Decimal
                     else calc_unit_price(rate, uncached, input_tokens, _PER))
        rate = card.output
        if rate is not None:
            cost += (rate * output_tokens / _PER if type(rate) is Decimal
                     else calc_unit_price(rate, output_tokens, input_tokens, _PER))
        if card.per_request is not None:
            cost += card.per_request
        return cost
