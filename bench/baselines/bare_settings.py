"""Settings of the bare Channels baseline: nothing but Channels and a channel layer.

``REDIS_URL`` selects channels-redis (the same layer and configuration as the app's
scale-out settings); otherwise Channels' in-memory layer, as in the tutorial.
"""

import os

SECRET_KEY = "bench-bare-baseline"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
DATABASES: dict = {}
USE_TZ = True
ASGI_APPLICATION = "bench.baselines.bare_channels.application"

if os.environ.get("REDIS_URL"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [os.environ["REDIS_URL"]],
                "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "bare"),
                "capacity": int(os.environ.get("CHANNEL_LAYER_CAPACITY", "10000")),
                "expiry": int(os.environ.get("CHANNEL_LAYER_EXPIRY", "60")),
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000, "expiry": 60},
        }
    }
