"""The pure core: pricing, budgets, windows, totals, budget ladders and guard decisions.

Values in, values out, with an explicit ``now``: nothing here does I/O or imports faust,
aiokafka, redis, slack-sdk or psycopg.
"""
