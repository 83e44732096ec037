"""Settings of the demo project.

The embedded default needs nothing: SQLite and the in-memory channel layer in one
process. ``DATABASE_URL`` selects another database (PostgreSQL for scale-out) and
``REDIS_URL`` selects skapi_channels' Redis layer, so many daphne processes share
presence and messages.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "insecure-demo-key-set-DJANGO_SECRET_KEY-in-production"
)
DEBUG = env_flag("DJANGO_DEBUG", True)
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host.strip()
]

INSTALLED_APPS = [
    "daphne",  # runserver serves WebSockets through daphne
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "skapi_channels",
    "project.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

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

# SQLite runs in WAL mode with a busy timeout and IMMEDIATE transactions, so that
# concurrent presence writes wait for each other instead of failing with
# "database is locked".
SQLITE_PATH = Path(os.environ.get("SQLITE_PATH", BASE_DIR / "db.sqlite3"))
SQLITE_OPTIONS = {
    "timeout": 20,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}

if os.environ.get("DATABASE_URL"):
    # Health checks let a process outlive a database restart.
    DATABASES = {
        "default": dj_database_url.parse(
            os.environ["DATABASE_URL"], conn_max_age=60, conn_health_checks=True
        )
    }
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # Under ASGI each HTTP request runs in a thread of its own, so a persistent
        # connection would still be opened per request: a pool reuses them (Django
        # checks each one it hands out, so a process outlives a database restart).
        DATABASES["default"].update(CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=False)
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": int(os.environ.get("DATABASE_POOL_SIZE", "10")),
            "timeout": 10,
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            # Keep the database thread's connection: reopening it for every
            # presence write (and re-running the PRAGMAs) was most of a join's cost.
            "CONN_MAX_AGE": None,
            "OPTIONS": SQLITE_OPTIONS,
            "TEST": {"NAME": str(BASE_DIR / "test-db.sqlite3")},
        }
    }

# Scale-out: skapi_channels' Redis layer publishes a group message once and each
# process fans it out to its own connections (see docs/deployment.md);
# ``capacity`` bounds the queue of each connection, as in the embedded layer.
# CHANNEL_LAYER_BACKEND selects channels-redis instead:
# ``skapi_channels.layers.RedisChannelLayer`` (channels-redis's core layer, counting
# its drops; one queue per process in Redis, ``capacity`` bounds a whole process and
# ``expiry`` how long a message may wait) or channels-redis's pub/sub layer.
REDIS_FANOUT_LAYER = "skapi_channels.redis_fanout.RedisFanoutLayer"
if os.environ.get("REDIS_URL"):
    _backend = os.environ.get("CHANNEL_LAYER_BACKEND", REDIS_FANOUT_LAYER)
    _fanout = _backend == REDIS_FANOUT_LAYER
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": _backend,
            "CONFIG": {
                "hosts": [os.environ["REDIS_URL"]],
                "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "skapi"),
                "capacity": int(
                    os.environ.get("CHANNEL_LAYER_CAPACITY", "1000" if _fanout else "10000")
                ),
                "expiry": int(os.environ.get("CHANNEL_LAYER_EXPIRY", "60")),
            },
        }
    }
    if _backend.endswith("RedisPubSubChannelLayer"):
        # The pub/sub layer has no queues, so neither capacity nor expiry.
        for unused in ("capacity", "expiry"):
            CHANNEL_LAYERS["default"]["CONFIG"].pop(unused)
else:
    # One process: skapi_channels' in-process layer (channels' InMemoryChannelLayer
    # works too, but is several times slower and drops silently on full queues).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "skapi_channels.local_layer.LocalChannelLayer",
            "CONFIG": {"capacity": 1000, "expiry": 60},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves static files (the JS client included) under daphne as well as
# under runserver, straight from the apps' static folders; collectstatic is only
# needed for production.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# SKAPI_CHANNELS_JSON: a JSON object of SKAPI_CHANNELS settings, e.g.
# '{"HEARTBEAT_INTERVAL": 0.5, "DEAD_AFTER": 2, "REAP_INTERVAL": 0.5}' (the
# multi-process tests use it for a fast reaper).
SKAPI_CHANNELS: dict[str, object] = json.loads(os.environ.get("SKAPI_CHANNELS_JSON") or "{}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "skapi_channels": {"handlers": ["console"], "level": "INFO", "propagate": False}
    },
}
