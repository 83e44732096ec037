"""System checks of the environment: channel layer, database, routers, Origin."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import connection
from django.test import override_settings

from skapi_channels.checks import check_channel_layer, check_database, check_origin


def ids(messages) -> list[str]:
    return [message.id for message in messages]


def layer(backend: str) -> dict:
    return {"default": {"BACKEND": backend}}


def test_the_apps_layers_pass():
    for backend in (
        "skapi_channels.local_layer.LocalChannelLayer",
        "skapi_channels.layers.RedisChannelLayer",
    ):
        with override_settings(CHANNEL_LAYERS=layer(backend)):
            assert check_channel_layer() == [], backend


def test_no_channel_layer_is_an_error_with_a_hint():
    for value in ({}, {"other": {"BACKEND": "x"}}, None):
        with override_settings(CHANNEL_LAYERS=value):
            [message] = check_channel_layer()
            assert message.id == "skapi_channels.E020"
            assert "LocalChannelLayer" in str(message.hint)


def test_a_backend_that_cannot_be_imported_is_an_error():
    with override_settings(CHANNEL_LAYERS=layer("no.such.Layer")):
        assert ids(check_channel_layer()) == ["skapi_channels.E021"]


def test_layers_that_drop_silently_get_a_warning():
    for backend in (
        "channels.layers.InMemoryChannelLayer",
        "channels_redis.core.RedisChannelLayer",
    ):
        with override_settings(CHANNEL_LAYERS=layer(backend)):
            [message] = check_channel_layer()
            assert message.id == "skapi_channels.W020"
            assert backend in str(message.msg)


def test_the_test_database_passes():
    assert check_database() == []


def test_other_vendors_are_an_error():
    with mock.patch.object(connection, "vendor", "mysql"):
        assert ids(check_database()) == ["skapi_channels.E023"]


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite version check")
def test_old_sqlite_is_an_error():
    with mock.patch.object(connection.Database, "sqlite_version_info", (3, 34, 1)):
        [message] = check_database()
    assert message.id == "skapi_channels.E022"
    assert "3.34.1" in str(message.msg)


class ElsewhereRouter:
    def db_for_write(self, model, **hints):
        return "other" if model._meta.app_label == "skapi_channels" else None


class NoMigrateRouter:
    def allow_migrate(self, db, app_label, **hints):
        return app_label != "skapi_channels"


class OtherAppsRouter:
    def db_for_read(self, model, **hints):
        return "other" if model._meta.app_label == "auth" else None


def test_routers_that_move_the_presence_tables_are_an_error():
    for router in ("ElsewhereRouter", "NoMigrateRouter"):
        with override_settings(DATABASE_ROUTERS=[f"tests.test_checks_environment.{router}"]):
            assert ids(check_database()) == ["skapi_channels.E024"], router
    with override_settings(DATABASE_ROUTERS=["tests.test_checks_environment.OtherAppsRouter"]):
        assert check_database() == []


def test_allowed_hosts_star_with_the_origin_check_warns():
    with override_settings(ALLOWED_HOSTS=["*"]):
        assert ids(check_origin()) == ["skapi_channels.W021"]
    with override_settings(ALLOWED_HOSTS=["*"], SKAPI_CHANNELS={"CHECK_ORIGIN": False}):
        assert check_origin() == []
    with override_settings(ALLOWED_HOSTS=["example.com"]):
        assert check_origin() == []
