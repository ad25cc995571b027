"""The per-model admission bound: beyond it a request is refused (503), never queued."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from cvserve.errors import Overloaded

# (model_id, outcome, queued_s, run_s); outcome: ok, error, deadline, cancelled, overloaded
Listener = Callable[[str, str, float, float], None]


class Admission:
    """Per-model bound on requests admitted (queued + running): beyond it, 503 instead of
    queueing. A request keeps its slot until its worker job has finished or left the
    queue, not merely until its caller stopped waiting (a 504 frees no core), so the
    bound stays honest after deadlines."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: dict[str, int] = {}
        self.total = 0  # requests in flight for all models together
        self.running: dict[str, int] = {}
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()

    def enter(self, model_id: str) -> None:
        with self._lock:
            n = self.in_flight.get(model_id, 0)
            if n < self.limit:
                self.in_flight[model_id] = n + 1
                self.total += 1
                return
        self.notify(model_id, "overloaded", 0.0, 0.0)
        raise Overloaded(f"model {model_id} is busy ({n} requests queued); retry shortly")

    def started(self, model_id: str) -> None:
        with self._lock:
            self.running[model_id] = self.running.get(model_id, 0) + 1

    def leave(self, model_id: str, *, ran: bool = False) -> None:
        with self._lock:
            n = self.in_flight.get(model_id, 0)
            if n > 0:
                self.in_flight[model_id] = n - 1
                self.total -= 1
            if ran:
                self.running[model_id] = max(0, self.running.get(model_id, 1) - 1)

    def alone(self) -> bool:
        """Whether at most one request is in flight, for all models together."""
        return self.total <= 1

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """model_id -> (queued, running)."""
        with self._lock:
            return {
                m: (max(0, n - self.running.get(m, 0)), self.running.get(m, 0))
                for m, n in self.in_flight.items()
            }

    def notify(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # metrics must never fail a request
                listener(model_id, outcome, queued_s, run_s)
