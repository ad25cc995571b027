"""How jobs and files end: deleting files, retention sweeps, and the disk guard on uploads.

- A file that a Queued or Running job still needs is never deleted: `delete_files` refuses
  the whole request (`FileInUse`, HTTP 409, naming the jobs) and deletes nothing; the
  retention sweep skips such files until their jobs are done. A job can still lose its
  file in a narrow race (submitted while the file's deletion is under way, or the content
  removed behind the server's back): its worker then finds no file and the job ends Failed
  with `failedItems` ("file not found"), never with a server error.
- `Sweeper`: a background thread removing finished (Completed/Failed) jobs whose last
  status change is older than `job_retention_hours`, and files not updated for
  `file_retention_hours` unless an active job needs them. 0 keeps forever. Bounded work per
  sweep (`batch` rows of each), every min(retention / 10, 5 min); a sweep that hit its
  bound is followed by the next one within a second.
- `check_free_space`: an upload that would leave less than `min_free_disk_mb` free where
  the bytes go is refused (`InsufficientStorage`, HTTP 507) before anything is stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cvserve.errors import CVServeError
from cvserve.jobs.files import FileMeta, InsufficientStorage
from cvserve.jobs.stores import FilesStore, QueueStore

log = logging.getLogger("cvserve.jobs")

HOUR_MS = 3_600_000
MAX_SWEEP_INTERVAL_S = 300.0
MIN_SWEEP_INTERVAL_S = 0.05
MB = 1024 * 1024


class FileInUse(CVServeError):
    """Files that Queued or Running jobs still need (HTTP 409); nothing was deleted."""

    status = 409

    def __init__(self, busy: list[dict[str, Any]]) -> None:
        named = "; ".join(
            f"file {b['id']} by job(s) {', '.join(str(j) for j in b['jobIds'])}" for b in busy
        )
        super().__init__(
            f"not deleted: queued or running jobs still need these files ({named});"
            " delete them once those jobs are done"
        )
        self.busy = busy


class Needs:
    """Which files the active (Queued/Running) jobs need: by id, or by externalId for a job
    submitted before its file existed."""

    def __init__(self, queue: QueueStore, files: FilesStore, project: str | None = None) -> None:
        self.by_id: dict[tuple[str, int], list[int]] = {}
        self.by_external: dict[tuple[str, str], list[int]] = {}
        for job in queue.active_jobs(project):
            for item in job.payload.get("items") or []:
                if item.get("fileId") is not None:
                    key = (job.project, int(item["fileId"]))
                    self.by_id.setdefault(key, []).append(job.id)
                elif item.get("fileExternalId") is not None:
                    ext = (job.project, str(item["fileExternalId"]))
                    self.by_external.setdefault(ext, []).append(job.id)

    def jobs_of(self, meta: FileMeta) -> list[int]:
        jobs = list(self.by_id.get((meta.project, meta.id), []))
        if meta.external_id is not None:
            jobs += self.by_external.get((meta.project, meta.external_id), [])
        return sorted(set(jobs))


def delete_files(queue: QueueStore, files: FilesStore, project: str, metas: list[FileMeta]) -> int:
    """Delete these files (metadata and bytes), all or none: `FileInUse` when an active job
    needs any of them. Returns how many were deleted (a concurrent delete may win some)."""
    needs = Needs(queue, files, project)
    busy = []
    for meta in metas:
        jobs = needs.jobs_of(meta)
        if jobs:
            busy.append({"id": meta.id, "externalId": meta.external_id, "jobIds": jobs})
    if busy:
        raise FileInUse(busy)
    return sum(files.delete(project, meta.id) for meta in metas)


def check_free_space(files: FilesStore, incoming: int, floor_mb: float) -> None:
    """Refuse (507) an upload of `incoming` bytes that would leave less than `floor_mb` free.

    Where the store cannot tell its free space (PostgreSQL: the database's own disk) there
    is no check here; a full database disk still refuses the write (rolled back) with 507.
    """
    if floor_mb <= 0:
        return
    free = files.free_bytes()
    if free is None:
        return
    if free - incoming < floor_mb * MB:
        log.warning(
            "upload of %d bytes refused: %.1f MB free, the floor is %g MB (min_free_disk_mb)",
            incoming,
            free / MB,
            floor_mb,
        )
        raise InsufficientStorage(
            f"not enough free disk space for this upload of {incoming} bytes: the server keeps"
            f" at least {floor_mb:g} MB free for its files and has {free / MB:.1f} MB;"
            " nothing was stored"
        )


@dataclass(frozen=True)
class Swept:
    jobs: int
    files: int
    more: bool  # a bound was hit: more may be waiting


def sweep_interval_s(*retention_hours: float) -> float:
    """min(smallest non-zero retention / 10, 5 min), at least 50 ms."""
    given = [h for h in retention_hours if h > 0]
    if not given:
        return MAX_SWEEP_INTERVAL_S
    tenth = min(given) * 3600.0 / 10.0
    return max(MIN_SWEEP_INTERVAL_S, min(MAX_SWEEP_INTERVAL_S, tenth))


class Sweeper:
    """Retention in the background (see the module docstring); `sweep()` is one pass."""

    def __init__(
        self,
        queue: QueueStore,
        files: FilesStore,
        *,
        job_retention_hours: float = 0.0,
        file_retention_hours: float = 0.0,
        batch: int = 500,
        scan: int = 4,  # file batches looked at per sweep, in-use ones skipped
    ) -> None:
        self.queue = queue
        self.files = files
        self.job_retention_ms = round(job_retention_hours * HOUR_MS)
        self.file_retention_ms = round(file_retention_hours * HOUR_MS)
        self.batch = max(1, batch)
        self.scan = max(1, scan)
        self.interval_s = sweep_interval_s(job_retention_hours, file_retention_hours)
        self.removed_jobs = 0  # totals since start, for logs and metrics
        self.removed_files = 0
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.job_retention_ms > 0 or self.file_retention_ms > 0

    def sweep(self) -> Swept:
        jobs = files = 0
        more = False
        if self.job_retention_ms > 0:
            jobs = self.queue.purge_finished(self.job_retention_ms, self.batch)
            more = jobs >= self.batch
        if self.file_retention_ms > 0:
            files, files_more = self._sweep_files()
            more = more or files_more
        self.removed_jobs += jobs
        self.removed_files += files
        self.sweeps += 1
        if jobs or files:
            log.info(
                "retention: removed %d finished job(s) and %d file(s) (%d and %d since start)",
                jobs,
                files,
                self.removed_jobs,
                self.removed_files,
            )
        return Swept(jobs, files, more)

    def _sweep_files(self) -> tuple[int, bool]:
        removed, after = 0, 0
        for _ in range(self.scan):
            candidates = self.files.expired(self.file_retention_ms, self.batch, after)
            if not candidates:
                return removed, False
            after = candidates[-1].id
            needs = Needs(self.queue, self.files)  # read after the candidates: a tight race
            removed += _delete_unneeded(self.files, needs, candidates)
            if removed >= self.batch:
                return removed, True
            if len(candidates) < self.batch:
                return removed, False
        return removed, True

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="cvserve-retention", daemon=True)
        self._thread.start()
        log.info(
            "retention: finished jobs %s, files %s; swept every %.2f s",
            _hours(self.job_retention_ms),
            _hours(self.file_retention_ms),
            self.interval_s,
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    def _loop(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            try:
                more = self.sweep().more
            except Exception:  # the database is down, a disk error: try again later
                log.exception("retention sweep failed")
                more = False
            wait = min(self.interval_s, 1.0) if more else self.interval_s


def _delete_unneeded(files: FilesStore, needs: Needs, candidates: Iterable[FileMeta]) -> int:
    n = 0
    for meta in candidates:
        if not needs.jobs_of(meta) and files.delete(meta.project, meta.id):
            n += 1
    return n


def _hours(ms: int) -> str:
    return f"kept {ms / HOUR_MS:g} h" if ms > 0 else "kept forever"
