"""Bad SKAPI_CHANNELS settings fail ``manage.py check`` with an id and a hint."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from skapi_channels.checks import check_settings


def ids(**settings) -> list[str]:
    with override_settings(SKAPI_CHANNELS=settings):
        return [message.id for message in check_settings()]


def test_defaults_pass():
    assert ids() == []


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"MAX_FRAME_BYTES": 0}, "skapi_channels.E003"),
        ({"RATE_BURST": "40"}, "skapi_channels.E003"),
        ({"MAX_CONNECTIONS_PER_USER": True}, "skapi_channels.E003"),
        ({"RATE_PER_SECOND": -1}, "skapi_channels.E004"),
        ({"HEARTBEAT_INTERVAL": None}, "skapi_channels.E004"),
        ({"USER_ID_FUNCTION": "no.such.function"}, "skapi_channels.E005"),
        ({"USER_LOOKUP_FUNCTION": 42}, "skapi_channels.E005"),
        ({"DEAD_AFTER": 6, "HEARTBEAT_INTERVAL": 5}, "skapi_channels.E006"),
        ({"WEBSOCKET_PATH": 3}, "skapi_channels.E007"),
        ({"AUTHORIZE_JOIN": "os.nothing_here"}, "skapi_channels.E008"),
        ({"MAX_FRAME_SIZE": 1}, "skapi_channels.E002"),
        ({"MAX_GROUP_NAME_LENGTH": 256}, "skapi_channels.E010"),
        ({"GROUPS_CREATED_PER_MINUTE": -1}, "skapi_channels.E003"),
        ({"FLOOD_CLOSE_AFTER": 0}, "skapi_channels.E004"),
        ({"RTC_ICE_SERVERS": "stun:stun.example.com"}, "skapi_channels.E012"),
        ({"RTC_ICE_SERVERS": [{"url": "stun:x"}]}, "skapi_channels.E012"),
        ({"TRUSTED_PROXIES": "127.0.0.1"}, "skapi_channels.E013"),
        ({"SERVER_MAX_FRAME_BYTES": 32_768}, "skapi_channels.E014"),
        ({"SERVER_MAX_FRAME_BYTES": -1}, "skapi_channels.E014"),
        ({"TRUSTED_PROXIES": ["nginx"]}, "skapi_channels.E013"),
        ({"REFUSED_HANDSHAKES_PER_MINUTE": -1}, "skapi_channels.E003"),
        ({"REVOCATION_SWEEP_INTERVAL": 0}, "skapi_channels.E004"),
    ],
)
def test_bad_settings_are_reported(settings, expected):
    assert expected in ids(**settings)


def test_not_a_dict():
    with override_settings(SKAPI_CHANNELS=[1]):
        assert [m.id for m in check_settings()] == ["skapi_channels.E001"]


@pytest.mark.django_db  # Django 6's check command also runs the database checks
def test_manage_py_check_fails_with_the_hint():
    with (
        override_settings(SKAPI_CHANNELS={"RATE_BURST": 0}),
        pytest.raises(SystemCheckError, match="positive integer"),
    ):
        call_command("check")


def test_limits_beyond_the_protocol_may_be_off_and_names_may_fill_the_column():
    assert ids(GROUPS_CREATED_PER_MINUTE=0, HANDSHAKES_PER_MINUTE=0) == []
    assert ids(MAX_GROUP_NAME_LENGTH=255, FLOOD_CLOSE_AFTER=2.5) == []
