"""Token-bucket rate limiting per key (a client id, a remote address), in bounded memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from phi_engine.errors import InvalidRequestError, RateLimitedError

__all__ = ["RateLimitedError", "RateLimiter"]


class RateLimiter:
    """Token bucket per key (e.g. client_id or remote address).

    Each key's bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a call takes one,
    and a refused call takes one too (the bucket goes into debt, at most one burst deep).
    A bucket that has refilled completely is the same as no bucket, so idle keys are forgotten;
    past ``max_keys`` live buckets the least recently used one is dropped too, which keeps memory
    bounded under a flood of distinct keys at the price of a fresh burst for the dropped key.

    Args:
        rate_per_s: Tokens added per second.
        burst: Bucket size: calls allowed at once after a quiet period.
        clock: Monotonic seconds; injectable for tests.
        max_keys: The most buckets kept.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = 10_000,
    ) -> None:
        if not rate_per_s > 0:
            raise InvalidRequestError("rate_per_s must be positive", field="rate_per_s")
        if burst < 1:
            raise InvalidRequestError("burst must be at least 1", field="burst")
        if max_keys < 1:
            raise InvalidRequestError("max_keys must be at least 1", field="max_keys")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._idle_s = burst / self.rate_per_s  # time for an empty bucket to fill up
        # key -> (tokens, time of last update), least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one token from ``key``'s bucket.

        Raises:
            RateLimitedError: the bucket is empty; ``retry_after_s`` says when it is not.
        """
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            # max(0, ...): an injected clock may step back; never refill on negative time.
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate_per_s)
            if tokens < 1.0:
                # A refused call costs a token too (down to a debt of one burst): hammering a
                # limited key keeps it limited instead of slipping through at each refill, and
                # Retry-After stays true for the caller that waits it out.
                tokens = max(tokens - 1.0, -float(self.burst))
                self._buckets[key] = (tokens, now)
                retry = (1.0 - tokens) / self.rate_per_s
                raise RateLimitedError(
                    f"too many requests; retry in {retry:.2f} s", retry_after_s=retry
                )
            self._buckets[key] = (tokens - 1.0, now)
            self._evict(now)

    def _evict(self, now: float) -> None:
        # Oldest first: drop buckets that have refilled (idle), then, over the cap, the oldest.
        while self._buckets:
            key, (_, last) = next(iter(self._buckets.items()))
            if now - last < self._idle_s and len(self._buckets) <= self.max_keys:
                return
            del self._buckets[key]

    def __len__(self) -> int:
        """How many buckets are kept now."""
        with self._lock:
            return len(self._buckets)
