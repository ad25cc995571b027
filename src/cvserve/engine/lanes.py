"""Each model's own worker threads: its lanes, plus one to decode the next image meanwhile,
so a slow or saturated model never holds up requests to another."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor


class Lanes:
    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self._closed = False

    def executor(self, model_id: str) -> ThreadPoolExecutor:
        """The model's executor; RuntimeError once closed (the server is stopping)."""
        ex = self._executors.get(model_id)
        if ex is not None:
            return ex
        with self._lock:
            if self._closed:
                raise RuntimeError("lanes are closed")
            ex = self._executors.get(model_id)
            if ex is None:
                ex = ThreadPoolExecutor(
                    max_workers=self.lanes + 1,
                    thread_name_prefix=f"cvserve-{model_id.replace('/', '-')[:40]}",
                )
                self._executors[model_id] = ex
        return ex

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Let queued and running work finish, then stop every model's threads."""
        with self._lock:
            self._closed = True
            executors = list(self._executors.values())
        for ex in executors:
            ex.shutdown(wait=True, cancel_futures=False)
