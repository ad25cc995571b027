"""The two storage interfaces of the jobs subsystem, and the one place a backend is chosen.

- `QueueStore`: the durable job queue (the job records too): submit, get, counts, list
  (newest first, paged by id), the active (Queued/Running) jobs, purge of old finished ones;
  and for workers claim with a lease, heartbeat, complete/fail (only by the attempt that
  still holds the job), release, recover. Status only moves forward.
- `FilesStore`: stored files, metadata and bytes; externalId unique per project; delete
  (metadata and bytes), the files not updated for a while (retention), and the free space
  where the bytes go (None where the store cannot tell: PostgreSQL).

Implementations: SQLite + a local folder (`JobQueue`, `FileStore`: the default, one
machine) and PostgreSQL (`cvserve.jobs.postgres`, metadata and bytes in the database, so
every replica of a cluster shares them). `open_storage` picks PostgreSQL when
`settings.database_url` is set; psycopg is imported only then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cvserve.jobs.files import FileMeta
from cvserve.jobs.queue import DEFAULT_LEASE_MS, Job
from cvserve.settings import Settings

log = logging.getLogger("cvserve.jobs")


@runtime_checkable
class QueueStore(Protocol):
    """A durable job queue with leases (see `cvserve.jobs.queue` for the rules)."""

    lease_ms: int
    max_attempts: int
    owner: str

    def submit(self, kind: str, project: str, payload: dict[str, Any]) -> Job: ...

    def get(self, job_id: int, project: str | None = None) -> Job | None: ...

    def counts(self) -> dict[str, int]: ...

    def list_jobs(
        self, kind: str, project: str, limit: int, before_id: int | None = None
    ) -> list[Job]: ...

    def active_jobs(self, project: str | None = None) -> list[Job]: ...

    def purge_finished(self, older_than_ms: int, limit: int) -> int: ...

    def recover(self) -> int: ...

    def claim(self, kinds: Iterable[str]) -> Job | None: ...

    def heartbeat(self, job_id: int, attempt: int) -> bool: ...

    def complete(self, job_id: int, attempt: int, result: dict[str, Any]) -> bool: ...

    def fail(
        self, job_id: int, attempt: int, error: str, result: dict[str, Any] | None = None
    ) -> bool: ...

    def release(self, job_id: int, attempt: int) -> bool: ...


@runtime_checkable
class FilesStore(Protocol):
    """Stored files: `create` raises `DuplicateExternalId`; `read` raises FileNotFoundError
    when the content is missing."""

    def create(
        self, project: str, name: str, mime_type: str | None, external_id: str | None = None
    ) -> FileMeta: ...

    def get(self, project: str, file_id: int) -> FileMeta | None: ...

    def by_external_id(self, project: str, external_id: str) -> FileMeta | None: ...

    def find(
        self, project: str, file_id: int | None = None, external_id: str | None = None
    ) -> FileMeta | None: ...

    def write(self, meta: FileMeta, data: bytes) -> FileMeta: ...

    def read(self, meta: FileMeta) -> bytes: ...

    def delete(self, project: str, file_id: int) -> bool: ...

    def expired(self, older_than_ms: int, limit: int, after_id: int = 0) -> list[FileMeta]: ...

    def free_bytes(self) -> int | None: ...


@dataclass
class Storage:
    """An opened backend: its queue, its file store, how to close both, where it lives."""

    queue: QueueStore
    files: FilesStore
    close: Callable[[], None]
    where: str  # for logs: never holds a password


def open_storage(settings: Settings, *, lease_ms: int = DEFAULT_LEASE_MS) -> Storage:
    """PostgreSQL when `settings.database_url` is set, else SQLite + the data dir's folder."""
    if settings.database_url:
        from cvserve.jobs.postgres import PostgresDatabase, PostgresFileStore, PostgresQueue

        pg = PostgresDatabase(settings.database_url)
        storage = Storage(
            queue=PostgresQueue(pg, lease_ms=lease_ms),
            files=PostgresFileStore(pg),
            close=pg.close,
            where=f"PostgreSQL {pg.where}",
        )
    else:
        from cvserve.jobs.db import DB_NAME, Database
        from cvserve.jobs.files import FileStore
        from cvserve.jobs.queue import JobQueue

        db = Database(settings.data_dir / DB_NAME)
        storage = Storage(
            queue=JobQueue(db, lease_ms=lease_ms),
            files=FileStore(db, settings.data_dir / "files"),
            close=db.close,
            where=f"SQLite {db.path}",
        )
    log.info("jobs and files in %s", storage.where)
    return storage
