"""A stream's rates and latency over a short sliding window (what `stats` reports)."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

WINDOW_S = 5.0


class Rate:
    """Events per second over the last WINDOW_S seconds."""

    def __init__(self) -> None:
        self._times: deque[float] = deque(maxlen=2000)

    def tick(self, at: float | None = None) -> None:
        self._times.append(time.monotonic() if at is None else at)

    def per_second(self) -> float:
        now = time.monotonic()
        while self._times and now - self._times[0] > WINDOW_S:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], 1e-6)
        return round(len(self._times) / span, 2)


class Latency:
    """Decode-to-result milliseconds of the last few hundred inferred frames."""

    def __init__(self) -> None:
        self._ms: deque[float] = deque(maxlen=300)

    def add(self, ms: float) -> None:
        self._ms.append(ms)

    def summary(self) -> dict[str, float | None]:
        if not self._ms:
            return {"p50": None, "p95": None}
        values = np.fromiter(self._ms, float)
        p50, p95 = np.percentile(values, [50, 95]).tolist()
        return {"p50": round(p50, 1), "p95": round(p95, 1)}
