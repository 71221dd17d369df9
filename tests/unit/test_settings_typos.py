"""A misspelled setting is ignored by pydantic-settings (the default applies): the
process says so, with the setting it was probably meant to be."""

from __future__ import annotations

import logging

import pytest

from spendstream.settings import _warn_misspelled, load_settings


def test_a_near_miss_names_the_setting_it_was_meant_to_be() -> None:
    said = _warn_misspelled({"SPENDSTREAM_REDIS_PREFX": "x", "SPENDSTREAM_REDIS_PREFIX": "y",
                             "SPENDSTREAM_KAFKA_URL": "kafka://h:9092", "PATH": "/bin"})
    assert said == ["SPENDSTREAM_REDIS_PREFX is not a spendstream setting (ignored); did you "
                    "mean SPENDSTREAM_REDIS_PREFIX?"]


def test_a_name_far_from_every_setting_is_left_alone() -> None:
    """Other tools' variables that share the prefix are not typos."""
    assert _warn_misspelled({"SPENDSTREAM_SCREENSHOTS": "1", "SPENDSTREAM_X": "1"}) == []


def test_load_settings_warns_once_per_typo(monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SPENDSTREAM_REDIS_PREFX", "typo:")
    with caplog.at_level(logging.WARNING, logger="spendstream.settings"):
        settings = load_settings()
    assert settings.redis_prefix != "typo:"  # ignored, as pydantic-settings does
    assert [r.getMessage() for r in caplog.records].count(
        "SPENDSTREAM_REDIS_PREFX is not a spendstream setting (ignored); did you mean "
        "SPENDSTREAM_REDIS_PREFIX?") == 1
