from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.utils.translation import gettext_lazy as _


class SkapiChannelsConfig(AppConfig):
    name = "skapi_channels"
    verbose_name = _("Realtime")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from skapi_channels.checks import (
            check_channel_layer,
            check_database,
            check_origin,
            check_settings,
        )

        checks.register(check_settings)
        checks.register(check_channel_layer)
        checks.register(check_database)
        checks.register(check_origin, checks.Tags.security)

        from skapi_channels.revocation import connect_signals

        connect_signals()

        from skapi_channels.send_buffer import install_daphne_send_limit

        install_daphne_send_limit()
