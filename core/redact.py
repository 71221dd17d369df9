"""Keeping secrets out of what spendstream prints and logs.

Secrets travel as ``SecretStr`` (see :mod:`spendstream.settings`); these helpers are for
the places where a URL that may carry a password, or a client library's error message,
is about to become text a person or a log file sees.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def url_password(url: str) -> str | None:
    """The password in ``scheme://[user]:password@host``, if any."""
    try:
        return urlsplit(url).password or None
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (the user name is kept)."""
    password = url_password(url)
    if password is None:
        return url
    parts = urlsplit(url)
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostinfo}"))


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every non-empty secret in ``secrets`` replaced by ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
