"""Budgets files shipped with spendstream: the documented example and the demo's."""

EXAMPLE_BUDGETS = """\
# spendstream budgets file: every key is in docs/budgets.md.
thresholds: {warn: 0.8, cutoff: 1.0, alert: 1.2}
users:
  period: day                       # UTC day
  default_tier: free
  tiers:
    free: {usd: 0.13, tokens: 10000}    # either or both
    pro: {usd: 1.00}
    enterprise: {usd: 20.00}
  members: {acct-9: pro}
features:                           # categories
  chat: {period: month, usd: 2000, max_input_tokens: 4000, max_output_tokens: 1000, model: gpt-4o}
  quick_answer: {period: month, usd: 300, max_output_tokens: 200, model: gpt-4o-mini}
global:
  hourly_usd_alert: 50
  daily_usd: 100
  tokens_per_minute: 1000000
prices:                             # USD per 1M tokens, overriding the price table
  claude-sonnet-4-6: {input: 2.55, output: 12.75}
"""

DEMO_BUDGETS = """\
# The demo's budgets: small numbers so that a minute of traffic crosses them.
thresholds: {warn: 0.8, cutoff: 1.0, alert: 1.2}
users:
  default_tier: free
  tiers:
    free: {usd: 0.13}
    pro: {usd: 1.00}
  members: {acct-9: pro}
features:
  chat: {period: month, usd: 2000, max_output_tokens: 1000, model: gpt-4o}
  summarize: {period: day, usd: 0.50, max_output_tokens: 1000, model: gpt-4o}
global:
  hourly_usd_alert: 5
  daily_usd: 100
  tokens_per_minute: 5000000
prices:
  gpt-4o: {input: 2.50, output: 10.00}
  gpt-4o-mini: {input: 0.15, output: 0.60}
"""
