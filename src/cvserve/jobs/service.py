"""The jobs subsystem of one server: database, file store, queue and workers, wired once.

The storage is SQLite + the data dir's `files/` folder, or PostgreSQL when
`settings.database_url` is set (`cvserve.jobs.stores.open_storage`). Opened lazily (routes
work even before the lifespan ran, e.g. in tests) and started and
stopped by the server's lifespan. Its workers run prompts through the engine; its sweeper
removes finished jobs and files past their retention (`cvserve.jobs.lifecycle`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cvserve.jobs.lifecycle import Sweeper
from cvserve.jobs.segment import KIND as SEGMENT_KIND
from cvserve.jobs.segment import SegmentHandler
from cvserve.jobs.stores import FilesStore, QueueStore, Storage, open_storage
from cvserve.jobs.workers import WorkerPool
from cvserve.settings import Settings

if TYPE_CHECKING:
    from cvserve.engine import EngineAPI


class JobsService:
    def __init__(
        self,
        settings: Settings,
        engine: EngineAPI,
        *,
        lease_ms: int | None = None,  # None: settings.job_lease_s
        poll_s: float = 1.0,
        grace_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.lease_ms = lease_ms if lease_ms is not None else round(settings.job_lease_s * 1000)
        self.poll_s = poll_s
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._storage: Storage | None = None
        self._files: FilesStore | None = None
        self._queue: QueueStore | None = None
        self._workers: WorkerPool | None = None
        self._sweeper: Sweeper | None = None

    def open(self) -> None:
        with self._lock:
            if self._storage is not None:
                return
            storage = open_storage(self.settings, lease_ms=self.lease_ms)
            self._files, self._queue = storage.files, storage.queue
            handlers = {SEGMENT_KIND: SegmentHandler(self.engine, self._files, self.settings)}
            self._workers = WorkerPool(
                self._queue,
                handlers,
                self.settings.job_workers,
                poll_s=self.poll_s,
                grace_s=self.grace_s,
            )
            self._sweeper = Sweeper(
                self._queue,
                self._files,
                job_retention_hours=self.settings.job_retention_hours,
                file_retention_hours=self.settings.file_retention_hours,
            )
            self._storage = storage

    @property
    def files(self) -> FilesStore:
        self.open()
        assert self._files is not None
        return self._files

    @property
    def queue(self) -> QueueStore:
        self.open()
        assert self._queue is not None
        return self._queue

    @property
    def workers(self) -> WorkerPool:
        self.open()
        assert self._workers is not None
        return self._workers

    @property
    def sweeper(self) -> Sweeper:
        """The retention sweep (its totals: removed_jobs, removed_files)."""
        self.open()
        assert self._sweeper is not None
        return self._sweeper

    def start(self) -> None:
        """Open, resume jobs a crashed server left running, start the worker threads and
        the retention sweep (when a retention is set)."""
        self.workers.start()
        self.sweeper.start()

    def stop(self) -> None:
        """Finish (or hand back) running jobs; queued jobs stay queued for the next start."""
        with self._lock:
            workers, storage, sweeper = self._workers, self._storage, self._sweeper
        if sweeper is not None:
            sweeper.stop()
        if workers is not None:
            workers.stop()
        if storage is not None:
            storage.close()
        with self._lock:
            self._storage = self._files = self._queue = self._workers = None
            self._sweeper = None
