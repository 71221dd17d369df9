"""Kafka security from settings: one mapping for every aiokafka client and for faust.

The settings name the protocol (``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``),
the SASL mechanism and credentials, and the TLS files. :func:`kafka_client_kwargs` turns
them into the keyword arguments aiokafka's producer, consumer and admin client take, and
:func:`spendstream.streams.credentials.faust_credentials` into the worker's
``broker_credentials``, so the emitter, the topic set-up and the worker connect the same
way. Inconsistent settings (a SASL protocol
without a password, TLS files with a plaintext protocol) are a :class:`ConfigError` at
start, never a silent plaintext connection.
"""

from __future__ import annotations

import importlib
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spendstream.errors import ConfigError

if TYPE_CHECKING:
    from spendstream.settings import Settings

_TLS = frozenset({"SSL", "SASL_SSL"})
_SASL = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka client keyword arguments for the settings' Kafka security.

    ``security_protocol`` always; ``ssl_context`` (built with aiokafka's
    ``create_ssl_context``) for ``SSL``/``SASL_SSL``; ``sasl_mechanism``,
    ``sasl_plain_username`` and ``sasl_plain_password`` for the SASL protocols, or
    ``sasl_oauth_token_provider`` for ``OAUTHBEARER``. Raises :class:`ConfigError` naming
    the variable to fix.
    """
    _check(settings)
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in _TLS:
        kwargs["ssl_context"] = ssl_context(settings)
    if protocol in _SASL and settings.kafka_sasl_mechanism == "OAUTHBEARER":
        assert settings.kafka_sasl_oauth_token_provider is not None  # _check
        kwargs.update(sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=token_provider(
            settings.kafka_sasl_oauth_token_provider))
    elif protocol in _SASL:
        assert settings.kafka_sasl_password is not None  # _check
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    return kwargs


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context: verifies the brokers (hostname included) against
    ``kafka_ssl_cafile`` or the system CAs, and presents a client certificate if given."""
    from aiokafka.helpers import create_ssl_context

    cafile, certfile, keyfile = (settings.kafka_ssl_cafile, settings.kafka_ssl_certfile,
                                 settings.kafka_ssl_keyfile)
    for name, path in (("CAFILE", cafile), ("CERTFILE", certfile), ("KEYFILE", keyfile)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"SPENDSTREAM_KAFKA_SSL_{name}: {path} is not a readable file")
    secret = settings.kafka_ssl_key_password
    # Without a password, OpenSSL would prompt on the terminal for an encrypted key and
    # hang a worker; an empty one makes it fail, loudly, here.
    password = secret.get_secret_value() if secret else _no_password
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(cafile) if cafile else None,
            certfile=str(certfile) if certfile else None,
            keyfile=str(keyfile) if keyfile else None, password=password)
        return context
    except (ssl.SSLError, OSError, ValueError) as e:
        # ssl's messages name the library and reason, never the key's password.
        raise ConfigError(f"cannot load the Kafka TLS files (SPENDSTREAM_KAFKA_SSL_*): {e}; "
                          "check the certificate, the key and its password") from e


def token_provider(path: str) -> Any:
    """The OAUTHBEARER token provider named by ``package.module:name``: an aiokafka
    ``AbstractTokenProvider`` instance, or a class or factory that makes one."""
    from aiokafka.abc import AbstractTokenProvider

    var = "SPENDSTREAM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER"
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{var} must look like package.module:name, not {path!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{var}: cannot import {path} ({e}); is its package installed "
                          "where the worker and the apps run?") from e
    provider = target() if callable(target) else target
    if not isinstance(provider, AbstractTokenProvider):
        raise ConfigError(f"{var}: {path} made a {type(provider).__name__}, not an aiokafka "
                          "AbstractTokenProvider (it needs an async token() method)")
    return provider


def _no_password() -> str:
    return ""


def _check(settings: Settings) -> None:
    protocol = settings.kafka_security_protocol
    var = "SPENDSTREAM_KAFKA_SECURITY_PROTOCOL"
    oauth = settings.kafka_sasl_mechanism == "OAUTHBEARER"
    if protocol in _SASL and oauth:
        if not settings.kafka_sasl_oauth_token_provider:
            raise ConfigError(
                f"{var} is {protocol} with SPENDSTREAM_KAFKA_SASL_MECHANISM OAUTHBEARER, which "
                "needs SPENDSTREAM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER (package.module:name of your "
                "token provider)")
        if settings.kafka_sasl_username or settings.kafka_sasl_password:
            raise ConfigError("OAUTHBEARER takes its tokens from the provider; unset "
                              "SPENDSTREAM_KAFKA_SASL_USERNAME and _PASSWORD")
    elif protocol in _SASL:
        missing = [f"SPENDSTREAM_KAFKA_SASL_{name}" for name, value in
                   (("USERNAME", settings.kafka_sasl_username),
                    ("PASSWORD", settings.kafka_sasl_password)) if not value]
        if missing:
            raise ConfigError(f"{var} is {protocol}, which needs {' and '.join(missing)}")
    elif (settings.kafka_sasl_username or settings.kafka_sasl_password
          or settings.kafka_sasl_oauth_token_provider):
        raise ConfigError(f"SASL credentials are set but {var} is {protocol}; use "
                          "SASL_SSL (or SASL_PLAINTEXT on a trusted network)")
    tls_files = [f"SPENDSTREAM_KAFKA_SSL_{name}" for name, value in
                 (("CAFILE", settings.kafka_ssl_cafile), ("CERTFILE", settings.kafka_ssl_certfile),
                  ("KEYFILE", settings.kafka_ssl_keyfile)) if value]
    if settings.kafka_ssl_keyfile and not settings.kafka_ssl_certfile:
        raise ConfigError("SPENDSTREAM_KAFKA_SSL_KEYFILE is set without "
                          "SPENDSTREAM_KAFKA_SSL_CERTFILE, the certificate it belongs to")
    if tls_files and protocol not in _TLS:
        raise ConfigError(f"{', '.join(tls_files)} set but {var} is {protocol}; use SSL or "
                          "SASL_SSL, or the files are not used")
