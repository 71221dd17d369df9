"""``spendstream audit``: the token-inflation self-test against an OpenAI-compatible endpoint.

One fixed chat is sent with ``max_tokens=1``; the provider's ``usage.prompt_tokens`` is set
against the local tiktoken count of the same messages. A provider (or a proxy in front of
it) that bills more prompt tokens than the text holds shows up as a positive drift.

:func:`judge` is the pure part (counts in, verdict out); :func:`provider_prompt_tokens`
is the one network call, wrapping the client's errors in spendstream's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from pydantic import SecretStr

from spendstream.errors import ConfigError, ServiceUnavailable
from spendstream.producers.tokens import TokenCount, count_messages

AUDIT_MESSAGES: Final[tuple[dict[str, str], ...]] = (
    {"role": "system", "content": "You are a terse assistant. Answer in one word."},
    {"role": "user", "content": "What colour is a clear daytime sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And fresh snow, in one word, please?"},
)
"""The known prompt: plain ASCII text, no names or tools, so every tokenizer agrees on it."""

Verdict = Literal["OK", "INFLATED", "UNDER-COUNTED"]

EXIT_OK: Final = 0
EXIT_DRIFT: Final = 1


@dataclass(frozen=True, slots=True)
class AuditResult:
    """The provider's prompt count against the local one, and what that means."""

    provider_tokens: int
    local: TokenCount
    drift: Decimal
    """(provider - local) / local, as a fraction: +0.05 is 5% more than the text holds."""
    tolerance: Decimal
    verdict: Verdict

    @property
    def exit_code(self) -> int:
        """0 within tolerance, 1 for a drift beyond it."""
        return EXIT_OK if self.verdict == "OK" else EXIT_DRIFT


def judge(provider_tokens: int, local: TokenCount, tolerance: Decimal) -> AuditResult:
    """Compare the provider's count with the local one; pure, no I/O."""
    drift = (Decimal(provider_tokens) - local.tokens) / max(local.tokens, 1)
    verdict: Verdict = "OK"
    if abs(drift) > tolerance:
        verdict = "INFLATED" if drift > 0 else "UNDER-COUNTED"
    return AuditResult(provider_tokens, local, drift, tolerance, verdict)


def _percent(fraction: Decimal, signed: bool = False) -> str:
    value = (fraction * 100).quantize(Decimal("0.01"))
    return f"{value:+.2f}%" if signed else f"{value:.2f}%"


def report(result: AuditResult, base_url: str, model: str) -> list[str]:
    """The lines ``spendstream audit`` prints, the verdict last."""
    local = result.local
    how = (f"exact, {local.encoding}" if local.exact
           else f"approximation: {local.encoding} standing in for {model}'s own tokenizer")
    lines = [
        f"endpoint:        {base_url} (model {model})",
        f"provider count:  {result.provider_tokens} prompt tokens",
        f"local count:     {local.tokens} prompt tokens ({how})",
        f"drift:           {_percent(result.drift, signed=True)} "
        f"(tolerance ±{_percent(result.tolerance)})",
    ]
    if result.verdict == "OK":
        verdict = "OK: the provider counts the prompt as the local tokenizer does"
    elif result.verdict == "INFLATED":
        verdict = ("INFLATED: the provider bills more prompt tokens than the text holds; "
                   "compare its usage with your invoices, or check what a proxy adds")
    else:
        verdict = ("UNDER-COUNTED: the provider reports fewer prompt tokens than the local "
                   "count; budgets computed locally would run ahead of its bill")
    lines.append(f"verdict:         {verdict}")
    if not local.exact:
        lines.append("                 (indicative only: the local count is an approximation; "
                     "exact counts need the model's tiktoken encoding in TIKTOKEN_CACHE_DIR)")
    return lines


def provider_prompt_tokens(base_url: str, model: str, api_key: SecretStr | None,
                           key_source: str, timeout: float) -> int:
    """Send :data:`AUDIT_MESSAGES` once (``max_tokens=1``) and return ``usage.prompt_tokens``.

    Raises :class:`ServiceUnavailable` when the endpoint cannot be reached or fails, and
    :class:`ConfigError` when it refuses the key or the model. Messages name the URL and
    what to check; they never contain the key.
    """
    import openai

    secret = api_key.get_secret_value() if api_key is not None else ""
    # A local server (vLLM, Ollama, llama.cpp) usually needs no key, but the client insists
    # on one: send a placeholder rather than fail before asking.
    client = openai.OpenAI(base_url=base_url, api_key=secret or "no-key",
                           timeout=timeout, max_retries=1)

    def hide(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    try:
        completion: Any = client.chat.completions.create(
            model=model, messages=list(AUDIT_MESSAGES),  # type: ignore[arg-type]
            max_tokens=1)
    except openai.APITimeoutError as e:
        raise ServiceUnavailable(
            f"{base_url} did not answer within {timeout:g}s; check that the server is up, "
            "or raise --timeout") from e
    except openai.APIConnectionError as e:
        cause = hide(str(e.__cause__ or e))
        raise ServiceUnavailable(
            f"cannot connect to {base_url} ({cause}); check the URL, that the server is "
            "running, and that it serves the OpenAI API (the base URL usually ends in /v1)"
        ) from e
    except openai.AuthenticationError as e:
        raise ConfigError(
            f"{base_url} refused the API key (HTTP {e.status_code}); check that {key_source} "
            "holds a key for this endpoint") from e
    except openai.NotFoundError as e:
        raise ConfigError(
            f"{base_url} answered 404 for model {model!r}: {hide(e.message)}; check the model "
            "name and that the base URL ends where /chat/completions is served (often /v1)"
        ) from e
    except openai.APIStatusError as e:
        raise ServiceUnavailable(
            f"{base_url} answered HTTP {e.status_code}: {hide(e.message)}") from e
    except openai.OpenAIError as e:
        raise ServiceUnavailable(f"calling {base_url} failed: {hide(str(e))}") from e
    usage = getattr(completion, "usage", None)
    tokens = getattr(usage, "prompt_tokens", None)
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        raise ServiceUnavailable(
            f"{base_url} answered without usage.prompt_tokens, so there is nothing to audit; "
            "this server does not report token usage")
    return tokens


def run_audit(base_url: str, model: str, api_key: SecretStr | None, key_source: str,
              tolerance: Decimal, timeout: float) -> int:
    """Ask the endpoint, count locally, print the report; the exit code of ``audit``."""
    local = count_messages(AUDIT_MESSAGES, model)
    provider = provider_prompt_tokens(base_url, model, api_key, key_source, timeout)
    result = judge(provider, local, tolerance)
    print("\n".join(report(result, base_url, model)))
    return result.exit_code
