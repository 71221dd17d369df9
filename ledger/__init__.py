"""The spend ledger: every counted call, priced, in PostgreSQL (``cost_logs``).

Turned on by ``SPENDSTREAM_DATABASE_URL``; see docs/ledger.md.
"""
