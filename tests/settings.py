"""Settings for the test run: the demo project's, with a fast password hasher."""

from project.settings import *  # noqa: F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Serve static files from the apps' folders without a collectstatic run.
WHITENOISE_AUTOREFRESH = True
# Consumers driven in the test process share the in-memory layer; Redis is tested
# with real daphne processes by tests/scaleout.
CHANNEL_LAYERS = {"default": {"BACKEND": "skapi_channels.local_layer.LocalChannelLayer"}}

# A test database of this run's own, so that concurrent runs do not share one (the
# SQLite file, not the in-memory database, which fights database_sync_to_async).
import os  # noqa: E402
import tempfile  # noqa: E402

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": os.path.join(tempfile.gettempdir(), f"skapi-test-{os.getpid()}.sqlite3")
    }
else:
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"  # noqa: F405
    }
