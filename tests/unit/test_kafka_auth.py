"""Kafka security settings → aiokafka client kwargs and faust credentials.

The TLS cases use a throwaway CA made with the ``openssl`` command and a real handshake
against a local TLS server, so the context is checked for what it does, not its fields.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from spendstream.errors import ConfigError
from spendstream.kafka_auth import kafka_client_kwargs
from spendstream.producers import Emitter
from spendstream.settings import Settings, load_settings
from spendstream.streams.credentials import faust_credentials

SASL_PASSWORD = "sasl-pw-Zq81"
KEY_PASSWORD = "key-pw-Hn27"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (plain and
    password-protected key), all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=spendstream-test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", "san.ext", cwd=d)
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}",
             "-out", "client-enc.key", cwd=d)
    yield d


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def _without_none(d: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(d).items() if v is not None}


def test_plaintext_is_the_default_and_needs_no_faust_credentials() -> None:
    s = _settings()
    assert kafka_client_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_maps_to_aiokafka_and_faust_alike(mechanism: str) -> None:
    s = _settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism=mechanism,
                  kafka_sasl_username="alice", kafka_sasl_password=SASL_PASSWORD)
    kwargs = kafka_client_kwargs(s)
    assert kwargs == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                      "sasl_plain_username": "alice", "sasl_plain_password": SASL_PASSWORD}
    # The worker's faust app gets the same connection settings as the emitter and admin.
    assert _without_none(credentials_to_aiokafka_auth(faust_credentials(s))) == kwargs
    assert SASL_PASSWORD not in repr(faust_credentials(s))


class StaticTokens(AbstractTokenProvider):
    """A token provider as a user would write one for a managed Kafka service."""

    async def token(self) -> str:
        return "header.payload.signature"


def make_tokens() -> StaticTokens:
    return StaticTokens()


@pytest.mark.parametrize("path", [f"{__name__}:StaticTokens", f"{__name__}:make_tokens"])
def test_oauthbearer_maps_to_aiokafka_and_faust_alike(path: str, pki: Path) -> None:
    s = _settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER",
                  kafka_sasl_oauth_token_provider=path, kafka_ssl_cafile=pki / "ca.pem")
    kwargs = kafka_client_kwargs(s)
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(kwargs["sasl_oauth_token_provider"], StaticTokens)
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    auth = credentials_to_aiokafka_auth(faust_credentials(s))
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(auth["sasl_oauth_token_provider"], StaticTokens)

    async def build() -> None:  # the clients accept them
        AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **kwargs)
        Emitter("127.0.0.1:9", **kwargs)

    asyncio.run(build())


@pytest.mark.parametrize(("provider", "says"), [
    (None, "SPENDSTREAM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER"),
    ("no_colon_here", "package.module:name"),
    ("no_such_module_xyz:Tokens", "cannot import no_such_module_xyz:Tokens"),
    (f"{__name__}:SASL_PASSWORD", "not an aiokafka AbstractTokenProvider"),
])
def test_a_bad_oauth_provider_says_what_to_fix(provider: str | None, says: str) -> None:
    s = _settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="OAUTHBEARER",
                  kafka_sasl_oauth_token_provider=provider)
    with pytest.raises(ConfigError, match=re.escape(says)):
        kafka_client_kwargs(s)


def test_sasl_ssl_verifies_the_broker_against_the_ca(pki: Path) -> None:
    s = _settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                  kafka_sasl_username="alice", kafka_sasl_password=SASL_PASSWORD,
                  kafka_ssl_cafile=pki / "ca.pem")
    kwargs = kafka_client_kwargs(s)
    context = kwargs.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert kwargs == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                      "sasl_plain_username": "alice", "sasl_plain_password": SASL_PASSWORD}
    faust_kwargs = _without_none(credentials_to_aiokafka_auth(faust_credentials(s)))
    assert isinstance(faust_kwargs.pop("ssl_context"), ssl.SSLContext)
    assert faust_kwargs == kwargs


async def _handshake(client: ssl.SSLContext, pki: Path, require_client_cert: bool) -> str:
    """Connect to a local TLS server with ``client``; return the peer's certificate CN."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    server.load_cert_chain(pki / "server.pem", pki / "server.key")
    server.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        seen.append(dict(x[0] for x in peer.get("subject", ())).get("commonName", ""))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        assert await reader.read(2) == b"ok"
        writer.close()
    finally:
        srv.close()
        await srv.wait_closed()
    return seen[0]


async def test_ssl_context_does_mutual_tls_with_a_password_protected_key(pki: Path) -> None:
    s = _settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki / "ca.pem",
                  kafka_ssl_certfile=pki / "client.pem",
                  kafka_ssl_keyfile=pki / "client-enc.key", kafka_ssl_key_password=KEY_PASSWORD)
    kwargs = kafka_client_kwargs(s)
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert await _handshake(kwargs["ssl_context"], pki, require_client_cert=True) == "client"
    creds = faust_credentials(s)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"


async def test_without_the_cafile_a_private_ca_is_refused(pki: Path) -> None:
    context = kafka_client_kwargs(_settings(kafka_security_protocol="SSL"))["ssl_context"]
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(context, pki, require_client_cert=False)


def test_the_kwargs_are_accepted_by_aiokafka_clients_and_the_emitter(pki: Path) -> None:
    s = _settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
                  kafka_sasl_username="alice", kafka_sasl_password=SASL_PASSWORD,
                  kafka_ssl_cafile=pki / "ca.pem")

    async def build() -> None:
        kwargs = kafka_client_kwargs(s)
        AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", **kwargs)
        AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9", **kwargs)
        Emitter("127.0.0.1:9", **kwargs)
        assert Emitter.from_settings(s)._producer_kwargs["sasl_plain_username"] == "alice"

    asyncio.run(build())


@pytest.mark.parametrize(("settings", "names"), [
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "alice"},
     ["SPENDSTREAM_KAFKA_SASL_PASSWORD"]),
    ({"kafka_security_protocol": "SASL_PLAINTEXT"},
     ["SPENDSTREAM_KAFKA_SASL_USERNAME", "SPENDSTREAM_KAFKA_SASL_PASSWORD"]),
    ({"kafka_sasl_username": "alice", "kafka_sasl_password": SASL_PASSWORD},
     ["SPENDSTREAM_KAFKA_SECURITY_PROTOCOL"]),
    ({"kafka_ssl_cafile": "/etc/hostname"}, ["SPENDSTREAM_KAFKA_SSL_CAFILE"]),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
     ["SPENDSTREAM_KAFKA_SSL_CAFILE"]),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/etc/hostname"},
     ["SPENDSTREAM_KAFKA_SSL_CERTFILE"]),
])
def test_inconsistent_settings_name_the_variable(settings: dict[str, Any], names: list[str]
                                                 ) -> None:
    with pytest.raises(ConfigError) as e:
        kafka_client_kwargs(_settings(**settings))
    for name in names:
        assert name in str(e.value)
    assert SASL_PASSWORD not in str(e.value)


@pytest.mark.parametrize("password", [None, "not-the-key-password"])
def test_an_encrypted_key_without_its_password_fails_at_start(pki: Path, password: str | None
                                                              ) -> None:
    # No password must not fall through to OpenSSL's terminal prompt (a hung worker).
    s = _settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki / "ca.pem",
                  kafka_ssl_certfile=pki / "client.pem", kafka_ssl_keyfile=pki / "client-enc.key",
                  kafka_ssl_key_password=password)
    with pytest.raises(ConfigError, match="TLS files") as e:
        kafka_client_kwargs(s)
    assert "not-the-key-password" not in str(e.value)


def test_settings_come_from_the_environment_and_hide_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    s = load_settings()
    assert kafka_client_kwargs(s)["sasl_plain_password"] == SASL_PASSWORD
    for text in (repr(s), str(s), s.model_dump_json()):
        assert SASL_PASSWORD not in text
    monkeypatch.setenv("SPENDSTREAM_KAFKA_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ConfigError, match="SPENDSTREAM_KAFKA_SASL_MECHANISM"):
        load_settings()


def test_the_worker_uses_them_for_topic_setup_and_faust(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from spendstream import runner
    from spendstream.domain.budgets import Budgets
    from spendstream.streams import app, topics

    seen: dict[str, Any] = {}

    async def ensure_topics(*args: Any, **kwargs: Any) -> dict[str, int]:
        seen["topics"] = kwargs
        return {}

    def build_app(*args: Any, **kwargs: Any) -> None:
        seen["app"] = kwargs
        raise RuntimeError("stop here")

    monkeypatch.setattr(topics, "ensure_topics", ensure_topics)
    monkeypatch.setattr(app, "build_app", build_app)
    s = _settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="alice",
                  kafka_sasl_password=SASL_PASSWORD)
    with pytest.raises(RuntimeError, match="stop here"):
        runner.run_worker(s, Budgets())
    assert seen["topics"]["sasl_plain_password"] == SASL_PASSWORD
    creds = seen["app"]["broker_credentials"]
    assert credentials_to_aiokafka_auth(creds)["sasl_plain_username"] == "alice"
