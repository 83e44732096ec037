"""The settings object: defaults, types, import strings, cache and reload."""

from __future__ import annotations

from django.test import override_settings

from skapi_channels import identity
from skapi_channels.conf import DEFAULTS, Settings, conf
from skapi_channels.limits import _limiters, limiter


def allow_all(user_id: str, group: str) -> bool:
    return True


def test_defaults_and_types():
    settings = Settings()
    with override_settings(SKAPI_CHANNELS={}):
        assert settings.MAX_FRAME_BYTES == DEFAULTS["MAX_FRAME_BYTES"] == 32768
        assert settings.RATE_PER_SECOND == 20.0 and isinstance(settings.RATE_PER_SECOND, float)
        assert settings.CHECK_ORIGIN is True
        assert settings.AUTHORIZE_JOIN is None
        assert settings.USER_ID_FUNCTION is identity.user_id_of


def test_project_values_are_converted_and_imported():
    with override_settings(
        SKAPI_CHANNELS={
            "RATE_PER_SECOND": 5,
            "WEBSOCKET_PATH": "/live",
            "AUTHORIZE_JOIN": "tests.test_conf.allow_all",
            "CHECK_ORIGIN": 0,
        }
    ):
        assert conf.RATE_PER_SECOND == 5.0 and isinstance(conf.RATE_PER_SECOND, float)
        assert conf.WEBSOCKET_PATH == "live/"
        assert conf.AUTHORIZE_JOIN is allow_all
        assert conf.CHECK_ORIGIN is False
    assert conf.RATE_PER_SECOND == 20.0
    assert conf.AUTHORIZE_JOIN is None


def test_values_are_cached_until_the_setting_changes(settings):
    with override_settings(SKAPI_CHANNELS={"RATE_BURST": 7}):
        assert conf.RATE_BURST == 7
        assert conf.__dict__["RATE_BURST"] == 7  # a plain attribute after the first read
        # Mutating the dict in place is not a settings change: the cache holds.
        settings.SKAPI_CHANNELS["RATE_BURST"] = 8
        assert conf.RATE_BURST == 7
        conf.reload()
        assert conf.RATE_BURST == 8
    assert conf.RATE_BURST == 40


def test_a_non_dict_setting_reads_as_defaults():
    with override_settings(SKAPI_CHANNELS=[1]):
        assert conf.MAX_CONNECTIONS_PER_USER == 10


def test_unknown_names_raise_attribute_error():
    try:
        conf.NO_SUCH_SETTING  # noqa: B018
    except AttributeError as error:
        assert "NO_SUCH_SETTING" in str(error)
    else:
        raise AssertionError("an unknown setting was read")


def test_limiters_start_afresh_when_the_settings_change():
    _limiters.clear()
    with override_settings(SKAPI_CHANNELS={"HANDSHAKES_PER_MINUTE": 1}):
        first = limiter("handshakes", conf.HANDSHAKES_PER_MINUTE)
        assert first.take("1.2.3.4") and not first.take("1.2.3.4")
        assert limiter("handshakes", conf.HANDSHAKES_PER_MINUTE) is first
    again = limiter("handshakes", conf.HANDSHAKES_PER_MINUTE)
    assert again is not first and again.per_minute == 600
    assert again.take("1.2.3.4")
