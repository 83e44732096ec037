"""The demo project's own tests run on its URLs, with its app installed."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def demo_project(settings: Any) -> None:
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "project.demo"]
    settings.ROOT_URLCONF = "project.urls"
