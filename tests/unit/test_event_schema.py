"""The published JSON Schema of the usage event is the model's, and describes real events."""

from __future__ import annotations

import json
from decimal import Decimal

from spendstream.contract.event import UsageEvent
from spendstream.contract.event_schema import json_schema, published, schema_text


def test_the_published_schema_is_what_the_model_produces() -> None:
    assert published() == schema_text(), (
        "core/contract/usage-event.schema.json is stale: regenerate it with "
        "python -m spendstream.contract.event_schema > core/contract/usage-event.schema.json")


def test_the_schema_names_every_field_an_encoded_event_carries() -> None:
    schema = json_schema()
    event = UsageEvent(user_id="acct-7", feature="chat", model="gpt-4o", input_tokens=3,
                       cost_usd=Decimal("0.0123"))
    encoded = json.loads(event.to_json())
    assert set(encoded) <= set(schema["properties"])
    assert schema["required"] == ["user_id", "feature", "model"]
    assert schema["properties"]["schema"]["const"] == 1
    assert schema["properties"]["ts"]["anyOf"][0]["format"] == "date-time"
