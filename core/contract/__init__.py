"""The wire and storage formats, each owned by one module.

``event``: the usage event (and its JSON Schema); ``keys``: Redis key names and flag
values; ``rollup``: the worker's internal rollup message; ``alert``: the alert payload.
"""
