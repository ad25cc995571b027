"""Per-key request rate limit (settings.rate_limit_per_minute): a token bucket per caller.

Each caller may burst up to the per-minute allowance, refilled continuously. Over it:
429 with Retry-After (seconds until the next request would be admitted). Callers are
identified by a SHA-256 digest of their API key (the key itself is never stored), or by
client address for requests without a key. Idle buckets are dropped, so memory stays
bounded however many callers come and go.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable

from cvserve.errors import TooManyRequests


class RateLimited(TooManyRequests):
    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimiter:
    MAX_BUCKETS = 100_000

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[bytes, tuple[float, float]] = {}  # digest -> (tokens, stamp)
        self._lock = threading.Lock()
        self._last_sweep = clock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @staticmethod
    def caller(key: str | None, client: str | None) -> bytes:
        ident = f"key:{key}" if key else f"addr:{client or '?'}"
        return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).digest()

    def hit(self, key: str | None, client: str | None = None) -> None:
        """Spend one token for this caller, or raise RateLimited (429) with Retry-After."""
        if not self.enabled:
            return
        who = self.caller(key, client)
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(who, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
            if tokens >= 1.0:
                self._buckets[who] = (tokens - 1.0, now)
                self._sweep(now)
                return
            self._buckets[who] = (tokens, now)
        wait = max(1, math.ceil((1.0 - tokens) / self.rate))
        raise RateLimited(
            f"rate limit of {int(self.capacity)} requests per minute exceeded; retry in {wait} s",
            retry_after_s=wait,
        )

    def _sweep(self, now: float) -> None:
        """Forget callers whose bucket has refilled (they are as good as new)."""
        full_after = self.capacity / self.rate
        if now - self._last_sweep < min(60.0, full_after) and len(self._buckets) < self.MAX_BUCKETS:
            return
        self._last_sweep = now
        stale = [w for w, (_, stamp) in self._buckets.items() if now - stamp >= full_after]
        for who in stale:
            del self._buckets[who]
        if len(self._buckets) >= self.MAX_BUCKETS:  # a flood of fresh callers: start over
            self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)
