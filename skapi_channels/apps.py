from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class SkapiChannelsConfig(AppConfig):
    name = "skapi_channels"
    verbose_name = "Realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from skapi_channels.checks import check_settings

        checks.register(check_settings)

        from skapi_channels.send_buffer import install_daphne_send_limit

        install_daphne_send_limit()
