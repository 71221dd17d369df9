"""The audit's verdict: the provider's prompt count against the local one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from spendstream.audit import judge, report
from spendstream.producers.tokens import TokenCount

EXACT = TokenCount(100, True, "cl100k_base")
APPROX = TokenCount(100, False, "cl100k_base")


@pytest.mark.parametrize(("provider", "tolerance", "verdict", "drift", "code"), [
    (100, "0.02", "OK", "0", 0),
    (102, "0.02", "OK", "0.02", 0),            # the tolerance itself is still OK
    (103, "0.02", "INFLATED", "0.03", 1),
    (98, "0.02", "OK", "-0.02", 0),
    (97, "0.02", "UNDER-COUNTED", "-0.03", 1),
    (101, "0", "INFLATED", "0.01", 1),
    (150, "0.5", "OK", "0.5", 0),
])
def test_verdicts(provider: int, tolerance: str, verdict: str, drift: str, code: int) -> None:
    result = judge(provider, EXACT, Decimal(tolerance))
    assert result.verdict == verdict
    assert result.drift == Decimal(drift)
    assert result.exit_code == code


def test_an_empty_local_count_does_not_divide_by_zero() -> None:
    assert judge(5, TokenCount(0, True, "cl100k_base"), Decimal("0.02")).verdict == "INFLATED"


def test_an_approximate_count_makes_the_verdict_indicative() -> None:
    lines = report(judge(100, APPROX, Decimal("0.02")), "http://x/v1", "gpt-4o")
    assert "approximation: cl100k_base standing in for gpt-4o's own tokenizer" in lines[2]
    assert lines[-2].startswith("verdict:         OK")
    assert "indicative only" in lines[-1]
    exact = report(judge(100, EXACT, Decimal("0.02")), "http://x/v1", "gpt-4")
    assert "(exact, cl100k_base)" in exact[2]
    assert not any("indicative" in line for line in exact)
