"""The usage event's JSON Schema, generated from :class:`~spendstream.contract.event.UsageEvent`.

The schema is published beside this module as ``usage-event.schema.json`` (shipped in the
wheel, and checked by a test to equal what the model produces). Regenerate it with::

    python -m spendstream.contract.event_schema > core/contract/usage-event.schema.json
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from spendstream.contract.event import UsageEvent

FILE_NAME = "usage-event.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The schema of one event on ``spendstream.usage`` (what the worker accepts)."""
    schema = UsageEvent.model_json_schema(by_alias=True)
    # The validator also takes epoch seconds, which pydantic cannot see.
    schema["properties"]["ts"] = {
        "anyOf": [{"type": "string", "format": "date-time"},
                  {"type": "number", "minimum": 0, "exclusiveMaximum": 32_503_680_000}],
        "title": "Ts",
        "description": "RFC 3339 with a UTC offset (2026-11-23T10:00:00Z) or epoch seconds; "
                       "defaults to the time the event was built",
    }
    # A JSON number is refused (money is never a float); pydantic sees only Decimal.
    schema["properties"]["cost_usd"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "default": None, "title": "Cost Usd",
        "description": "USD as a decimal string such as \"0.0123\" (0 to 100000), never a "
                       "JSON number; absent: the worker prices the tokens"}
    return {"$schema": DIALECT, **schema}


def schema_text() -> str:
    """:func:`json_schema` as the published file holds it."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def published() -> str:
    """The schema file shipped with the package."""
    return files("spendstream.contract").joinpath(FILE_NAME).read_text(encoding="utf-8")


if __name__ == "__main__":
    print(schema_text(), end="")
