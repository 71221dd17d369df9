"""What the OpenAI and Anthropic wrappers' endpoints share: admit through the guard, call
the provider, record the outcome once (free when the call failed, metered when it
streams), and answer from the response cache when the feature has one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from spendstream.errors import Unmetered
from spendstream.producers.cache import AsyncReplayStream, ReplayStream, Stored, cache_key
from spendstream.producers.guard import Admission
from spendstream.producers.wrappers.streams import (
    AsyncGuardedStream,
    GuardedStream,
    Passthrough,
    StreamMeter,
    record_safely,
)

logger = logging.getLogger(__name__)


class GuardedEndpoint(Passthrough):
    """What both wrappers' endpoints share: attributes pass through to the client's own
    endpoint, and a call's outcome is recorded (free when it failed, metered when it
    streams). Subclasses set :attr:`provider` and :attr:`observe` and read usage.

    The raw-response variants (``with_raw_response``, ``with_streaming_response``) would
    reach the provider without the guard, so they raise :class:`~spendstream.errors.Unmetered`.
    """

    provider: str = ""
    observe: Callable[[StreamMeter, Any], None]
    refused: frozenset[str] = frozenset({"with_raw_response", "with_streaming_response"})

    def __init__(self, inner: Any, guard: Any) -> None:
        super().__init__(inner)
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        if name in type(self).refused:
            raise Unmetered(
                f"{type(self._inner).__name__}.{name} is not metered by spendstream: call "
                "the guarded method, or take the unguarded client explicitly with "
                "`wrapped.unguarded` and record the usage yourself (guard.admit/record)")
        return getattr(self._inner, name)

    def _usage(self, response: Any, admission: Admission) -> dict[str, Any]:
        raise NotImplementedError

    def _request(self, kwargs: dict[str, Any]) -> Any:
        """The provider's view of the caller's arguments: ``guard_messages``, ``model``,
        ``max_tokens``, ``stream`` and ``params(admission)`` for the real call."""
        raise NotImplementedError

    def _admit(self, user_id: str, feature: str, tier: str | None, request: Any,
               reserve: bool = True) -> Admission:
        admission: Admission = self._guard.admit(
            user_id, feature, request.guard_messages, model=request.model,
            max_tokens=request.max_tokens, tier=tier, reserve=reserve)
        return admission

    async def _aadmit(self, user_id: str, feature: str, tier: str | None, request: Any,
                      reserve: bool = True) -> Admission:
        admission: Admission = await self._guard.admit(
            user_id, feature, request.guard_messages, model=request.model,
            max_tokens=request.max_tokens, tier=tier, reserve=reserve)
        return admission

    def _create(self, user_id: str, feature: str, tier: str | None,
                kwargs: dict[str, Any], method: str = "create") -> Any:
        """Admit, answer from the response cache or call the client's own ``method``,
        record (a failure free, a stream metered, a cache hit free and marked). The
        worst-case reservation is held only after the cache missed: a hit holds nothing."""
        request = self._request(kwargs)
        admission = self._admit(user_id, feature, tier, request, reserve=False)
        params = request.params(admission)
        key = self._cache_key(method, admission, params)
        if key is not None:
            raw = self._guard.cache_get(key)
            hit = self._replay(admission, raw, request.stream, ReplayStream)
            if hit is not None:
                return hit
        admission = self._guard.reserve(admission)
        try:
            response = getattr(self._inner, method)(**params)
        except BaseException:
            self._failed(admission)
            raise
        if request.stream:
            return GuardedStream(response, self._meter(admission, key))
        self._done(admission, response, key)
        return response

    async def _acreate(self, user_id: str, feature: str, tier: str | None,
                       kwargs: dict[str, Any], method: str = "create") -> Any:
        """:meth:`_create` for asyncio clients and an ``AsyncGuard``."""
        request = self._request(kwargs)
        admission = await self._aadmit(user_id, feature, tier, request, reserve=False)
        params = request.params(admission)
        key = self._cache_key(method, admission, params)
        if key is not None:
            raw = await self._guard.cache_get(key)
            hit = self._replay(admission, raw, request.stream, AsyncReplayStream)
            if hit is not None:
                return hit
        admission = await self._guard.reserve(admission)
        try:
            response = await getattr(self._inner, method)(**params)
        except BaseException:
            self._failed(admission)
            raise
        if request.stream:
            return AsyncGuardedStream(response, self._meter(admission, key))
        self._done(admission, response, key)
        return response

    def _cache_key(self, method: str, admission: Admission, params: dict[str, Any]
                   ) -> str | None:
        """The response cache's key, when the feature caches and the call can be."""
        if admission.cache_ttl is None or method != "create":
            return None
        prefix: str = self._guard.prefix
        return cache_key(prefix, self.provider, type(self).__name__, admission.feature,
                         params)

    def _replay(self, admission: Admission, raw: bytes | None, stream: bool,
                replay: Callable[[list[Any]], Any]) -> Any:
        """A cache hit as the SDK's own objects (recorded as a hit), or ``None``."""
        stored = Stored.decode(raw) if raw is not None else None
        if stored is None or stored.stream != stream:
            return None
        try:
            objects = stored.objects()
        except Exception:
            logger.warning("a cached %s answer could not be rebuilt; calling the model",
                           self.provider, exc_info=True)
            return None
        try:
            self._guard.record_hit(admission, provider=self.provider, usage=stored.usage)
        except Exception:
            logger.exception("spendstream could not record a cache hit")
        return replay(objects) if stream else objects[0]

    def _helper(self, user_id: str, feature: str, tier: str | None,
                kwargs: dict[str, Any]) -> Any:
        """Admit, then the client's own ``stream(...)`` helper with its stream metered."""
        from spendstream.producers.wrappers.helpers import GuardedStreamManager

        request = self._request(kwargs)
        request.stream = True  # ask for the usage a stream reports (OpenAI: include_usage)
        admission = self._admit(user_id, feature, tier, request)
        try:
            manager = self._inner.stream(**request.params(admission))
        except BaseException:
            self._failed(admission)
            raise
        return GuardedStreamManager(manager, self._meter(admission),
                                    lambda: self._failed(admission))

    def _ahelper(self, user_id: str, feature: str, tier: str | None,
                 kwargs: dict[str, Any]) -> Any:
        """:meth:`_helper` for asyncio clients. ``stream()`` is not awaited in the SDKs
        (``async with client.messages.stream(...)``), so the guard admits the call when
        the block is entered."""
        from spendstream.producers.wrappers.helpers import AsyncGuardedStreamManager

        async def open_() -> tuple[Any, StreamMeter, Callable[[], None]]:
            request = self._request(kwargs)
            request.stream = True
            admission = await self._aadmit(user_id, feature, tier, request)
            try:
                manager = self._inner.stream(**request.params(admission))
            except BaseException:
                self._failed(admission)
                raise
            return manager, self._meter(admission), lambda: self._failed(admission)

        return AsyncGuardedStreamManager(open_)

    def _failed(self, admission: Admission) -> None:
        # Failed calls are free: counted, at zero tokens.
        record_safely(self._guard, admission, provider=self.provider, input_tokens=0,
                      output_tokens=0, status="error")

    def _meter(self, admission: Admission, key: str | None = None) -> StreamMeter:
        meter = StreamMeter(self._guard, admission, self.provider, type(self).observe)
        ttl = admission.cache_ttl
        if key is not None and ttl is not None:
            meter.keep = []

            def store(m: StreamMeter) -> None:
                value = Stored.of_chunks(m.keep or [], m.usage()).encode()
                self._guard.cache_put(key, value, ttl)

            meter.store = store
        return meter

    def _done(self, admission: Admission, response: Any, key: str | None = None) -> None:
        usage = self._usage(response, admission)
        record_safely(self._guard, admission, provider=self.provider, **usage)
        if key is None or admission.cache_ttl is None or usage.get("estimated"):
            return
        try:
            self._guard.cache_put(key, Stored.of_response(response, usage).encode(),
                                  admission.cache_ttl)
        except Exception:
            logger.exception("spendstream could not cache a %s answer", self.provider)
