"""Every python example in README.md and docs/ is run by a test, and the README stays a
front page."""

from __future__ import annotations

from tests.docs import PAGES, ROOT, block_under, blocks

RUN_BY = {
    "tests/integration/test_guard_readme.py": [
        block_under(ROOT / "README.md", "## At the call site"),
        block_under(ROOT / "docs" / "sdk.md", "## Guard")],
    "tests/integration/test_sdk_guide_callsite.py": [
        block_under(ROOT / "docs" / "sdk.md",
                    "### Limits, reservations and the response cache")],
    "tests/integration/test_wrappers_readme.py": [
        block_under(ROOT / "docs" / "sdk.md", "## OpenAI and Anthropic wrappers")],
    "tests/integration/test_readme_examples.py (examples/app.py)": [
        block_under(ROOT / "docs" / "sdk.md", "## Emit usage from an application")],
}


def test_every_python_example_is_run_by_a_test() -> None:
    covered = {code for codes in RUN_BY.values() for code in codes}
    orphans = [(page.relative_to(ROOT).as_posix(), code.splitlines()[0])
               for page in PAGES for code in blocks(page) if code not in covered]
    assert not orphans, f"python examples no test runs (add them to RUN_BY): {orphans}"


def test_the_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 8 * 1024, f"README.md is {len(readme)} bytes; move depth to docs/"
    for page in PAGES:
        assert "issue " not in page.read_text(encoding="utf-8").lower().replace(
            "known issue", ""), f"{page.name} cites an internal issue number"


def test_doc_links_resolve() -> None:
    import re

    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_published_json_schema_is_the_event_models() -> None:
    from spendstream.contract.event_schema import schema_text

    published = (ROOT / "docs" / "usage-event.schema.json").read_text(encoding="utf-8")
    assert published == schema_text(), (
        "docs/usage-event.schema.json is stale: regenerate it with python -m "
        "spendstream.contract.event_schema > docs/usage-event.schema.json")
