"""Drop-in wrappers that put the guard around the official OpenAI and Anthropic clients.

``wrap_openai(client, guard)`` and ``wrap_anthropic(client, guard)``. The wrappers read the
clients' responses by attribute and import neither library: install the one you use
(``pip install 'spendstream[openai]'`` or ``'spendstream[anthropic]'``).
"""

from __future__ import annotations

from spendstream.producers.wrappers.anthropic import GuardedAnthropic, wrap_anthropic
from spendstream.producers.wrappers.openai import GuardedOpenAI, wrap_openai
from spendstream.producers.wrappers.streams import AsyncGuardedStream, GuardedStream

__all__ = ["AsyncGuardedStream", "GuardedAnthropic", "GuardedOpenAI", "GuardedStream",
           "wrap_anthropic", "wrap_openai"]
