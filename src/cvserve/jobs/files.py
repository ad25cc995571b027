"""Stored files: metadata in SQLite, bytes under `<data_dir>/files/<id>`.

Content is written to a temporary file, fsynced and renamed into place before the metadata
says `uploaded`, so a crash mid-upload never leaves a half file marked as uploaded. The
SHA-256 of the content is kept: with the id it keys the SAM embedding cache, so a
re-upload never reuses a stale embedding.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvserve.errors import CVServeError
from cvserve.jobs.db import Database, now_ms


class DuplicateExternalId(CVServeError):
    status = 409

    def __init__(self, external_id: str) -> None:
        super().__init__(f"a file with externalId {external_id!r} already exists")
        self.external_id = external_id


class InsufficientStorage(CVServeError):
    """No room for an upload: refused before anything is stored (HTTP 507)."""

    status = 507


@dataclass(frozen=True)
class FileMeta:
    id: int
    project: str
    external_id: str | None
    name: str
    mime_type: str | None
    uploaded: bool
    size: int | None
    sha256: str | None
    created_time: int
    uploaded_time: int | None
    last_updated_time: int

    @property
    def cache_key(self) -> str:
        return f"file:{self.id}:{self.sha256}"

    def as_api(self) -> dict[str, Any]:
        """The platform's file object (camelCase); `uploadUrl` is added by the HTTP layer."""
        out: dict[str, Any] = {
            "id": self.id,
            "externalId": self.external_id,
            "name": self.name,
            "mimeType": self.mime_type,
            "uploaded": self.uploaded,
            "createdTime": self.created_time,
            "lastUpdatedTime": self.last_updated_time,
        }
        if self.uploaded_time is not None:
            out["uploadedTime"] = self.uploaded_time
        return out


def _meta(row: Any) -> FileMeta:
    return FileMeta(
        id=row["id"],
        project=row["project"],
        external_id=row["external_id"],
        name=row["name"],
        mime_type=row["mime_type"],
        uploaded=bool(row["uploaded"]),
        size=row["size"],
        sha256=row["sha256"],
        created_time=row["created_time"],
        uploaded_time=row["uploaded_time"],
        last_updated_time=row["last_updated_time"],
    )


class FileLookup(ABC):
    """`find` by id or externalId, over the two lookups each store implements."""

    @abstractmethod
    def get(self, project: str, file_id: int) -> FileMeta | None: ...

    @abstractmethod
    def by_external_id(self, project: str, external_id: str) -> FileMeta | None: ...

    def find(
        self, project: str, file_id: int | None = None, external_id: str | None = None
    ) -> FileMeta | None:
        if file_id is not None:
            return self.get(project, file_id)
        if external_id is not None:
            return self.by_external_id(project, external_id)
        return None


class FileStore(FileLookup):
    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()  # content and its hash must change together

    def path(self, file_id: int) -> Path:
        return self.root / str(int(file_id))

    def create(
        self, project: str, name: str, mime_type: str | None, external_id: str | None = None
    ) -> FileMeta:
        t = now_ms()
        try:
            with self.db.transaction() as c:
                cur = c.execute(
                    "INSERT INTO files (project, external_id, name, mime_type, created_time,"
                    " last_updated_time) VALUES (?, ?, ?, ?, ?, ?)",
                    (project, external_id, name, mime_type, t, t),
                )
                file_id = int(cur.lastrowid or 0)
        except sqlite3.IntegrityError as e:
            raise DuplicateExternalId(external_id or "") from e
        meta = self.get(project, file_id)
        assert meta is not None
        return meta

    def get(self, project: str, file_id: int) -> FileMeta | None:
        row = self.db.one("SELECT * FROM files WHERE id = ? AND project = ?", (file_id, project))
        return _meta(row) if row else None

    def by_external_id(self, project: str, external_id: str) -> FileMeta | None:
        row = self.db.one(
            "SELECT * FROM files WHERE external_id = ? AND project = ?", (external_id, project)
        )
        return _meta(row) if row else None

    def write(self, meta: FileMeta, data: bytes) -> FileMeta:
        """Store the content (atomically) and mark the file uploaded. Blocking: call off-loop."""
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorage(
                        "the server's file storage is full: the upload was not stored"
                    ) from e
                raise
            with self._write_lock:
                os.replace(tmp, self.path(meta.id))
                t = now_ms()
                self.db.execute(
                    "UPDATE files SET uploaded = 1, size = ?, sha256 = ?, uploaded_time = ?,"
                    " last_updated_time = ? WHERE id = ?",
                    (len(data), hashlib.sha256(data).hexdigest(), t, t, meta.id),
                )
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        updated = self.get(meta.project, meta.id)
        assert updated is not None
        return updated

    def read(self, meta: FileMeta) -> bytes:
        return self.path(meta.id).read_bytes()

    def delete(self, project: str, file_id: int) -> bool:
        """Remove the metadata, then the bytes; False when there was no such file.

        A crash between the two leaves an orphan content file, never metadata without
        content being reported as present (a later read is a clean FileNotFoundError)."""
        with self._write_lock:  # not between a write's rename and its UPDATE
            cur = self.db.execute(
                "DELETE FROM files WHERE id = ? AND project = ?", (file_id, project)
            )
            if cur.rowcount != 1:
                return False
            self.path(file_id).unlink(missing_ok=True)
        return True

    def expired(self, older_than_ms: int, limit: int, after_id: int = 0) -> list[FileMeta]:
        """Up to `limit` files (every project) not updated for `older_than_ms`, by id."""
        rows = self.db.all(
            "SELECT * FROM files WHERE last_updated_time < ? AND id > ? ORDER BY id LIMIT ?",
            (now_ms() - older_than_ms, after_id, limit),
        )
        return [_meta(r) for r in rows]

    def free_bytes(self) -> int | None:
        """Free space on the file system holding the content folder."""
        return int(shutil.disk_usage(self.root).free)
