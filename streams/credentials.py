"""The worker's faust ``broker_credentials``, from the same settings as every aiokafka client.

Kept beside the worker so the Kafka security mapping (:mod:`spendstream.kafka_auth`), which
the SDK's emitter uses too, does not import faust.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust

from spendstream.kafka_auth import kafka_client_kwargs

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from spendstream.settings import Settings


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The faust ``broker_credentials`` for the same settings; None for ``PLAINTEXT``."""
    kwargs = kafka_client_kwargs(settings)
    protocol = kwargs["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(kwargs["ssl_context"])
    if kwargs["sasl_mechanism"] == "OAUTHBEARER":
        return faust.OAuthCredentials(oauth_cb=kwargs["sasl_oauth_token_provider"],
                                      ssl_context=kwargs.get("ssl_context"))
    return faust.SASLCredentials(username=kwargs["sasl_plain_username"],
                                 password=kwargs["sasl_plain_password"],
                                 ssl_context=kwargs.get("ssl_context"),
                                 mechanism=kwargs["sasl_mechanism"])
