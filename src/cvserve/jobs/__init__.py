"""Durable background jobs: a queue, stored files, worker threads.

Storage is SQLite + a folder in the data dir (one machine, the default) or PostgreSQL when
`database_url` is set (every replica shares it): one `QueueStore` and one `FilesStore`
interface (`cvserve.jobs.stores`), two implementations each. Used by the promptable
segmentation API (`cvserve.http.segment`); see `queue` for how accepted jobs survive
crashes and restarts.
"""

from cvserve.jobs.queue import Job, JobQueue, JobStatus
from cvserve.jobs.service import JobsService
from cvserve.jobs.stores import FilesStore, QueueStore

__all__ = ["FilesStore", "Job", "JobQueue", "JobStatus", "JobsService", "QueueStore"]
