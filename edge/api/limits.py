"""Small reusable limits for what callers of the display API may ask for.

- :class:`RateLimiter`: a token bucket per key (a gRPC peer), in memory, with a bounded
  number of keys. Used by LookupImage.
- :func:`peer_key`: who a gRPC caller is, for per-peer limits: the client certificate's
  common name under TLS, else the peer's IP address (without the port, which changes on
  every connection).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import grpc

#: keys a RateLimiter remembers; past it the least recently seen key is forgotten. 1024
#: peers is far more than the few clients a terminal has, and a few dozen KB of memory
MAX_KEYS = 1024


class RateLimiter:
    """A token bucket per key: ``burst`` calls at once, refilled at ``per_minute``."""

    def __init__(self, per_minute: float, burst: int, *, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_s = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        #: key -> (tokens, time of the last refill); ordered least recently seen first
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = (
            collections.OrderedDict())

    def take(self, key: str) -> float:
        """Spend one token of ``key``: 0.0 when allowed, else the seconds until one is."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate_s if self.rate_s > 0 else float("inf")
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait


def peer_key(context: grpc.ServicerContext) -> str:
    """Who is calling: ``cn:<common name>`` under TLS, else ``ip:<address>``."""
    auth = context.auth_context()
    cns = auth.get("x509_common_name") if auth else None
    if cns:
        return "cn:" + cns[0].decode("utf-8", "replace")
    peer = context.peer() or ""  # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:..."
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0]
        return "ip:" + host.strip("[]")
    return peer or "unknown"
