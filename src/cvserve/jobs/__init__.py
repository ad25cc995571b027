"""Durable background jobs: a SQLite queue in the data dir, stored files, worker threads.

Used by the promptable segmentation API (`cvserve.http.vision`); see `queue` for how
accepted jobs survive crashes and restarts.
"""

from cvserve.jobs.queue import Job, JobQueue, JobStatus
from cvserve.jobs.service import JobsService

__all__ = ["Job", "JobQueue", "JobStatus", "JobsService"]
