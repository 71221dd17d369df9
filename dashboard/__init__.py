"""The dashboard: an HTTP API over the spend ledger and the live Redis state, the page
that uses only that API, and the weekly digest."""
