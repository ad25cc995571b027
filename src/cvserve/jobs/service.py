"""The jobs subsystem of one server: database, file store, queue and workers, wired once.

Opened lazily (routes work even before the lifespan ran, e.g. in tests) and started and
stopped by the server's lifespan. Its workers run prompts through the engine.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cvserve.jobs.db import DB_NAME, Database
from cvserve.jobs.files import FileStore
from cvserve.jobs.queue import JobQueue
from cvserve.jobs.segment import KIND as SEGMENT_KIND
from cvserve.jobs.segment import SegmentHandler
from cvserve.jobs.workers import WorkerPool
from cvserve.settings import Settings

if TYPE_CHECKING:
    from cvserve.engine import Engine


class JobsService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        lease_ms: int | None = None,
        poll_s: float = 1.0,
        grace_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.lease_ms = lease_ms if lease_ms is not None else round(settings.job_lease_s * 1000)
        self.poll_s = poll_s
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._db: Database | None = None
        self._files: FileStore | None = None
        self._queue: JobQueue | None = None
        self._workers: WorkerPool | None = None

    def open(self) -> None:
        with self._lock:
            if self._db is not None:
                return
            data = self.settings.data_dir
            db = Database(data / DB_NAME)
            self._files = FileStore(db, data / "files")
            self._queue = JobQueue(db, lease_ms=self.lease_ms)
            handlers = {SEGMENT_KIND: SegmentHandler(self.engine, self._files, self.settings)}
            self._workers = WorkerPool(
                self._queue,
                handlers,
                self.settings.job_workers,
                poll_s=self.poll_s,
                grace_s=self.grace_s,
            )
            self._db = db

    @property
    def files(self) -> FileStore:
        self.open()
        assert self._files is not None
        return self._files

    @property
    def queue(self) -> JobQueue:
        self.open()
        assert self._queue is not None
        return self._queue

    @property
    def workers(self) -> WorkerPool:
        self.open()
        assert self._workers is not None
        return self._workers

    def start(self) -> None:
        """Open, resume jobs a crashed server left running, start the worker threads."""
        self.workers.start()

    def stop(self) -> None:
        """Finish (or hand back) running jobs; queued jobs stay queued for the next start."""
        with self._lock:
            workers, db = self._workers, self._db
        if workers is not None:
            workers.stop()
        if db is not None:
            db.close()
        with self._lock:
            self._db = self._files = self._queue = self._workers = None
