"""UDP stage 2 (sender): a token bucket holding the sender to the configured bandwidth.

Why: nothing can tell a one-way sender to slow down, so the rate the receiver (and any device
between) can absorb is configured, and the sender never exceeds it by more than one burst.
"""

from __future__ import annotations

import threading
import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` bytes per second (0: unlimited), bursts of at most `burst` bytes; thread-safe."""

    def __init__(self, rate: int, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = burst or max(64 * 1024, rate // 50)
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def _delay(self, n: int) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def take(self, n: int, stop: threading.Event) -> bool:
        """Spend `n` bytes of budget, sleeping as needed; False if `stop` was set meanwhile."""
        if self.rate <= 0:
            return not stop.is_set()
        delay = self._delay(n)
        if (
            delay > 0.002
        ):  # smaller debts carry over: sleeping per datagram costs more than it paces
            return not stop.wait(delay)
        return True
