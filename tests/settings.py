"""Settings for the test run: the demo project's, with a fast password hasher."""

from project.settings import *  # noqa: F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Serve static files from the apps' folders without a collectstatic run.
WHITENOISE_AUTOREFRESH = True
# Consumers driven in the test process share the in-memory layer; Redis is tested
# with real daphne processes by tests/scaleout.
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
