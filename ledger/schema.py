"""The ledger's tables in PostgreSQL: the DDL, and monthly partitions made on demand.

``spend_ledger`` holds one row per counted event, partitioned by month on ``date`` (the
event's UTC day). Its primary key is ``(user_id, event_id, date)``: PostgreSQL requires
the partition key in every unique key of a partitioned table. That does not weaken the
dedup: an event's identity is ``(user_id, event_id)`` and its ``ts`` is fixed when the
call is made (a producer retry or a Kafka redelivery carries the same ``ts``), so every
copy of an event has the same ``date`` and lands in the same partition, where the key
catches it.

``grants`` holds every grant and unblock once (keyed by ``(user_id, grant_id)``, the
identity the worker deduplicates them by).

``spend_hourly`` is the rollup by (hour, user, feature, model) that month-level
questions read (calls, tokens, cost, unpriced calls, response-cache hits and what they
saved); the writer keeps it in step in the same transaction as the rows. The
view ``cost_logs`` is the public relation: plain SQL over it answers "who spent what on
which model".
"""

from __future__ import annotations

from datetime import date

TABLE = "spend_ledger"
ROLLUP = "spend_hourly"
VIEW = "cost_logs"
GRANTS = "grants"
"""One row per grant or unblock (``spendstream grant`` / ``unblock``), keyed by (user, id)
as the worker deduplicates them."""
READER = "spendstream_reader"
"""The role ``spendstream sql`` takes for its query: SELECT on the ledger, nothing else."""

PRICE_SOURCES = ("event", "table", "override", "failed", "unpriced")
"""Where a row's cost came from: the producer's ``cost_usd``, genai-prices' table, the
budgets file's ``prices:``, a failed call (free), or nothing (unpriced: cost NULL)."""

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    event_id text NOT NULL,
    ts timestamptz NOT NULL,
    date date NOT NULL,
    user_id text NOT NULL,
    feature text NOT NULL,
    model text NOT NULL,
    provider text,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_input_tokens bigint NOT NULL,
    cache_write_input_tokens bigint NOT NULL DEFAULT 0,
    status text NOT NULL,
    finish_reason text,
    tier text,
    estimated boolean NOT NULL DEFAULT false,
    cache_hit boolean NOT NULL DEFAULT false,
    cost_usd numeric,
    price_source text NOT NULL CHECK (price_source IN {PRICE_SOURCES!r}),
    saved_usd numeric,
    CHECK ((cost_usd IS NULL) = (price_source = 'unpriced')),
    PRIMARY KEY (user_id, event_id, date)
) PARTITION BY RANGE (date);

CREATE TABLE IF NOT EXISTS {ROLLUP} (
    hour timestamptz NOT NULL,
    user_id text NOT NULL,
    feature text NOT NULL,
    model text NOT NULL,
    calls bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_input_tokens bigint NOT NULL,
    cost_usd numeric NOT NULL,
    unpriced bigint NOT NULL,
    cache_hits bigint NOT NULL DEFAULT 0,
    saved_usd numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, user_id, feature, model)
);
CREATE INDEX IF NOT EXISTS {ROLLUP}_user ON {ROLLUP} (user_id, hour);

CREATE TABLE IF NOT EXISTS {GRANTS} (
    grant_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('grant', 'unblock')),
    ts timestamptz NOT NULL,
    date date NOT NULL,
    until date NOT NULL,
    user_id text NOT NULL,
    usd numeric,
    tokens bigint,
    reason text NOT NULL DEFAULT '',
    granted_by text NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, grant_id)
);
CREATE INDEX IF NOT EXISTS {GRANTS}_ts ON {GRANTS} (ts);

-- Columns added after the ledger's first version, added to a ledger made before them. The
-- check comes first: ALTER TABLE locks the table even when the column is there, and would
-- queue every writer behind a long report query at each start.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = '{TABLE}'::regclass
                   AND attname = 'saved_usd' AND NOT attisdropped) THEN
        ALTER TABLE {TABLE} ADD COLUMN saved_usd numeric;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = '{ROLLUP}'::regclass
                   AND attname = 'saved_usd' AND NOT attisdropped) THEN
        ALTER TABLE {ROLLUP} ADD COLUMN cache_hits bigint NOT NULL DEFAULT 0,
                             ADD COLUMN saved_usd numeric NOT NULL DEFAULT 0;
        -- The hits already in the rows (none of them carries a saving yet).
        UPDATE {ROLLUP} h SET cache_hits = r.hits
        FROM (SELECT date_trunc('hour', ts, 'UTC') AS hour, user_id, feature, model,
                     count(*) AS hits
              FROM {TABLE} WHERE cache_hit GROUP BY 1, 2, 3, 4) r
        WHERE (h.hour, h.user_id, h.feature, h.model) = (r.hour, r.user_id, r.feature, r.model);
    END IF;
    -- grants were first keyed by grant_id alone; the worker keys them per user.
    IF (SELECT array_length(conkey, 1) FROM pg_constraint
        WHERE conrelid = '{GRANTS}'::regclass AND contype = 'p') = 1 THEN
        ALTER TABLE {GRANTS} DROP CONSTRAINT {GRANTS}_pkey,
                             ADD PRIMARY KEY (user_id, grant_id);
    END IF;
END $$;

CREATE OR REPLACE VIEW {VIEW} AS
SELECT event_id, ts, date, user_id, feature, model, provider, input_tokens, output_tokens,
       cached_input_tokens, cache_write_input_tokens, status, finish_reason, tier,
       estimated, cache_hit, cost_usd, price_source, saved_usd
FROM {TABLE};

-- The role `spendstream sql` runs its queries as: it may read the ledger and nothing else
-- (no files, no programs, whoever the connecting user is). Made where the writer's user may
-- make roles; elsewhere `sql` runs with the connecting user's own rights.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
        CREATE ROLE {READER} NOLOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO {READER}', current_schema());
    GRANT SELECT ON {TABLE}, {ROLLUP}, {GRANTS}, {VIEW} TO {READER};
    IF pg_has_role(current_user, '{READER}', 'MEMBER') IS NOT TRUE THEN
        EXECUTE format('GRANT {READER} TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'spendstream: no role {READER} (the ledger user may not create roles)';
END $$;
"""
"""Idempotent: run at every start of a writer (``IF NOT EXISTS``, ``CREATE OR REPLACE``)."""

LOCK = "SELECT pg_advisory_xact_lock(hashtext('spendstream.ledger.ddl'))"
"""Serialises DDL between workers: ``IF NOT EXISTS`` alone races on the catalog."""


def month_start(day: date) -> date:
    """The first day of ``day``'s month."""
    return day.replace(day=1)


def next_month(day: date) -> date:
    """The first day of the month after ``day``'s."""
    first = month_start(day)
    return first.replace(year=first.year + 1, month=1) if first.month == 12 else (
        first.replace(month=first.month + 1))


def partition_name(day: date) -> str:
    """The partition holding ``day``: ``spend_ledger_y2026m11`` for any day of Nov 2026."""
    return f"{TABLE}_y{day.year:04d}m{day.month:02d}"


def partition_month(name: str) -> date | None:
    """The month a partition name stands for (its first day), ``None`` for other names."""
    prefix = f"{TABLE}_y"
    if not name.startswith(prefix) or len(name) != len(prefix) + 7 or name[-3] != "m":
        return None
    try:
        return date(int(name[-7:-3]), int(name[-2:]), 1)
    except ValueError:
        return None


def partition_ddl(day: date) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of the monthly partition that holds ``day``."""
    return (f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {TABLE} "
            f"FOR VALUES FROM ('{month_start(day).isoformat()}') "
            f"TO ('{next_month(day).isoformat()}')")
