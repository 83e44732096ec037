"""Per-connection rate limiting."""

from __future__ import annotations

import time
from collections import OrderedDict

from skapi_channels.conf import conf


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; each frame takes one."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class KeyedLimiter:
    """A token bucket per key (a user, an IP address), for the keys seen lately;
    ``per_minute`` 0 allows everything.

    Counted in this process only: with N processes a key may get up to N times the
    rate, which bounds abuse without a shared store on the hot path.
    """

    def __init__(self, per_minute: int, max_keys: int = 100_000) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self.buckets.popitem(last=False)
            bucket = self.buckets[key] = TokenBucket(self.per_minute / 60.0, self.per_minute)
        else:
            self.buckets.move_to_end(key)
        return bucket

    def take(self, key: str) -> bool:
        return self.per_minute <= 0 or self._bucket(key).take()

    def available(self, key: str) -> bool:
        """Whether ``take`` would succeed now, without taking."""
        if self.per_minute <= 0:
            return True
        bucket = self._bucket(key)
        if bucket.take():
            bucket.tokens += 1.0
            return True
        return False


_limiters: dict[str, KeyedLimiter] = {}


def limiter(name: str, per_minute: int) -> KeyedLimiter:
    """This process's limiter called ``name``, at ``per_minute`` (a setting's value).

    One per name; the settings object empties them all when ``SKAPI_CHANNELS``
    changes, so a new rate takes effect with fresh budgets.
    """
    found = _limiters.get(name)
    if found is None:
        found = _limiters[name] = KeyedLimiter(per_minute)
    return found


conf.on_reload(_limiters.clear)


class FloodMeter:
    """Whether a connection keeps sending at ``rate`` frames a second or more.

    Frames are counted in windows of about a second, each starting with the first
    frame after the previous one ended; a window whose frames came at ``rate`` or
    more extends the flood, any other ends it. ``frame()`` says True once the flood
    has lasted ``seconds``.
    """

    __slots__ = ("rate", "seconds", "window_start", "window_frames", "flooding_for")

    def __init__(self, rate: float, seconds: float) -> None:
        self.rate = rate
        self.seconds = seconds
        self.window_start = time.monotonic()
        self.window_frames = 0
        self.flooding_for = 0.0

    def frame(self) -> bool:
        now = time.monotonic()
        elapsed = now - self.window_start
        if elapsed >= 1.0:
            if self.window_frames >= self.rate * elapsed:
                self.flooding_for += elapsed
            else:
                self.flooding_for = 0.0
            self.window_start, self.window_frames = now, 0
        self.window_frames += 1
        return self.flooding_for >= self.seconds
