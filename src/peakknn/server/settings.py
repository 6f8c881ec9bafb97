"""The server's options, their defaults and their checks (plain Python: the CLI imports this
without the server's dependencies).

max_batch: most queries one index search runs (1 turns batching off); max_delay_ms: longest a
search waits for others to join its batch; max_queue: searches waiting per collection before
new ones are answered 503; max_body_bytes: largest request body (413 beyond); snapshot_every /
snapshot_seconds: a collection is snapshotted (and its log truncated) after this many writes, or
this long after its first write since the last snapshot, and always on shutdown.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7575
API_KEY_ENV = "PEAKKNN_API_KEY"


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    max_batch: int = 64
    max_delay_ms: float = 1.5  # like Triton's max_queue_delay: a few ms at most keeps p50 latency low
    max_queue: int = 1024
    max_body_bytes: int = 128 << 20  # 128 MiB: a 56,000 x 384 float32 set in two binary requests
    snapshot_every: int = 10_000
    snapshot_seconds: float = 60.0

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_body_bytes", "snapshot_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("max_delay_ms", "snapshot_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.snapshot_seconds == 0:
            raise ValueError("snapshot_seconds must be > 0")
