"""Worker threads inside the server process that take jobs from the queue and run them.

Threads, not asyncio tasks: a job is blocking work (decode, ONNX Runtime) that releases the
GIL, and running it on its own thread keeps the HTTP loop free. A heartbeat thread renews
the leases of running jobs. Stopping lets running jobs finish for a grace period, then hands
any still running back to the queue; queued jobs simply stay queued.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cvserve.errors import CVServeError
from cvserve.jobs.queue import Job
from cvserve.jobs.stores import QueueStore

log = logging.getLogger("cvserve.jobs")


@dataclass
class Outcome:
    """What a handler returns: a result (Completed) or an error message (Failed)."""

    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


Handler = Callable[[Job], Outcome]


class WorkerPool:
    def __init__(
        self,
        queue: QueueStore,
        handlers: Mapping[str, Handler],
        workers: int = 1,
        *,
        poll_s: float = 1.0,
        grace_s: float = 10.0,
    ) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self.workers = max(0, workers)  # 0: this process only submits (Ray's ingress)
        self.poll_s = poll_s
        self.grace_s = grace_s
        self._wake = threading.Condition()
        self._pending_wakes = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active: dict[int, int] = {}  # job id -> attempt, for heartbeats and release
        self._active_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    def start(self) -> None:
        if self._threads or self.workers == 0:
            return
        self._stop.clear()
        try:
            recovered = self.queue.recover()
        except Exception:  # the database is down: the workers poll until it is back
            log.exception("could not resume jobs left running; their leases will expire")
            recovered = 0
        if recovered:
            log.warning("resuming %d job(s) left running by a stopped server", recovered)
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"cvserve-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        hb = threading.Thread(target=self._heartbeats, name="cvserve-job-lease", daemon=True)
        hb.start()
        self._threads.append(hb)

    def wake(self) -> None:
        """A job was submitted: let an idle worker look now rather than at its next poll."""
        with self._wake:
            self._pending_wakes += 1
            self._wake.notify()

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for t in self._threads:
            t.join(timeout=self.grace_s)
        with self._active_lock:
            unfinished = dict(self._active)
        for job_id, attempt in unfinished.items():
            # Still running after the grace period: hand it to the next server start now.
            if self.queue.release(job_id, attempt):
                log.warning("job %d handed back unfinished at shutdown", job_id)
        self._threads = []

    # -- threads -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.claim(self.handlers)
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                with self._wake:
                    if self._pending_wakes == 0 and not self._stop.is_set():
                        self._wake.wait(self.poll_s)
                    self._pending_wakes = max(0, self._pending_wakes - 1)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        with self._active_lock:
            self._active[job.id] = job.attempt
        try:
            outcome = self._call(job)
            if outcome.ok:
                written = self.queue.complete(job.id, job.attempt, outcome.result)
            else:
                written = self.queue.fail(
                    job.id, job.attempt, outcome.error or "failed", outcome.result
                )
            if not written:
                log.warning(
                    "job %d attempt %d: result discarded (job re-claimed)", job.id, job.attempt
                )
        except Exception:
            log.exception("job %d: could not record its outcome", job.id)
        finally:
            with self._active_lock:
                self._active.pop(job.id, None)

    def _call(self, job: Job) -> Outcome:
        handler = self.handlers[job.kind]
        try:
            return handler(job)
        except CVServeError as e:
            return Outcome(error=e.message)
        except Exception as e:  # a bug in a handler fails the job, never the worker
            log.exception("job %d (%s) raised", job.id, job.kind)
            return Outcome(error=f"internal error while running the job: {type(e).__name__}")

    def _heartbeats(self) -> None:
        interval = max(0.05, self.queue.lease_ms / 3000.0)
        while not self._stop.wait(interval):
            with self._active_lock:
                active = dict(self._active)
            for job_id, attempt in active.items():
                try:
                    if not self.queue.heartbeat(job_id, attempt):
                        log.warning("job %d attempt %d lost its lease", job_id, attempt)
                except Exception:
                    log.exception("lease renewal failed for job %d", job_id)
