"""The tests' own project: the app as a library in a minimal Django project.

Apart from the demo (``project/``), so that the demo can change freely; the demo's
own tests (``tests/demo``) switch to its URLs and app. Processes started by the
live-server, browser and scale-out tests still serve the demo project.
"""

from __future__ import annotations

import os
import tempfile

import dj_database_url

# The demo's default key: tests sign handshake tokens that a live demo server reads.
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "insecure-demo-key-set-DJANGO_SECRET_KEY-in-production"
)
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "skapi_channels",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tests.urls"
ASGI_APPLICATION = "tests.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# A test database of this run's own, so that concurrent runs do not share one: a
# SQLite file (the in-memory database fights database_sync_to_async) in WAL mode
# with IMMEDIATE transactions, or PostgreSQL with a pool when DATABASE_URL is set.
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 10, "timeout": 10}}
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(tempfile.gettempdir(), f"skapi-tests-{os.getpid()}.sqlite3"),
            "CONN_MAX_AGE": None,
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {
                "NAME": os.path.join(tempfile.gettempdir(), f"skapi-test-{os.getpid()}.sqlite3")
            },
        }
    }

# Consumers driven in the test process share the app's in-process layer; Redis is
# tested with real daphne processes by tests/scaleout.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "skapi_channels.local_layer.LocalChannelLayer",
        "CONFIG": {"capacity": 1000, "expiry": 60},
    }
}
SKAPI_CHANNELS: dict[str, object] = {}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
