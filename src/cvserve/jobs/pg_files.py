"""Stored files in PostgreSQL: metadata and content (`bytea`) in `cvserve_files`, so every
replica of a cluster sees the same files and nothing is on a node's disk."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from cvserve.jobs.files import (
    DuplicateExternalId,
    FileLookup,
    FileMeta,
    InsufficientStorage,
    _meta,
)
from cvserve.jobs.pg_database import FILE_COLUMNS as _FILE_COLUMNS
from cvserve.jobs.pg_database import NOW_MS, PostgresDatabase

if TYPE_CHECKING:
    import psycopg


# -- the file store ----------------------------------------------------------------------
class PostgresFileStore(FileLookup):
    """`FilesStore` on PostgreSQL: metadata and content (bytea) in `cvserve_files`."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self._unique = db._psycopg.errors.UniqueViolation
        self._disk_full = db._psycopg.errors.DiskFull

    def create(
        self, project: str, name: str, mime_type: str | None, external_id: str | None = None
    ) -> FileMeta:
        def go(c: psycopg.Connection[Any]) -> Any:
            return c.execute(
                "INSERT INTO cvserve_files (project, external_id, name, mime_type,"
                f" created_time, last_updated_time) VALUES (%s, %s, %s, %s, {NOW_MS}, {NOW_MS})"
                f" RETURNING {_FILE_COLUMNS}",
                (project, external_id, name, mime_type),
            ).fetchone()

        try:
            return _meta(self.db.run(go))
        except self._unique as e:
            raise DuplicateExternalId(external_id or "") from e

    def get(self, project: str, file_id: int) -> FileMeta | None:
        return self._one(
            f"SELECT {_FILE_COLUMNS} FROM cvserve_files WHERE id = %s AND project = %s",
            (file_id, project),
        )

    def by_external_id(self, project: str, external_id: str) -> FileMeta | None:
        return self._one(
            f"SELECT {_FILE_COLUMNS} FROM cvserve_files WHERE external_id = %s AND project = %s",
            (external_id, project),
        )

    def write(self, meta: FileMeta, data: bytes) -> FileMeta:
        """Store the content and mark the file uploaded, in one transaction."""
        digest = hashlib.sha256(data).hexdigest()

        def go(c: psycopg.Connection[Any]) -> Any:
            return c.execute(
                "UPDATE cvserve_files SET content = %b, uploaded = true, size = %s, sha256 = %s,"
                f" uploaded_time = {NOW_MS}, last_updated_time = {NOW_MS}"
                f" WHERE id = %s AND project = %s RETURNING {_FILE_COLUMNS}",
                (data, len(data), digest, meta.id, meta.project),
            ).fetchone()

        try:
            row = self.db.run(go)
        except self._disk_full as e:  # rolled back: nothing half-written
            raise InsufficientStorage(
                "the jobs database is out of disk space: the upload was not stored"
            ) from e
        if row is None:
            raise FileNotFoundError(f"file {meta.id} is gone")
        return _meta(row)

    def read(self, meta: FileMeta) -> bytes:
        row = self.db.run(
            lambda c: c.execute(
                "SELECT content FROM cvserve_files WHERE id = %s AND uploaded",
                (meta.id,),
                binary=True,
            ).fetchone()
        )
        if row is None or row["content"] is None:
            raise FileNotFoundError(f"file {meta.id} has no stored content")
        return bytes(row["content"])

    def delete(self, project: str, file_id: int) -> bool:
        """Remove the row, metadata and content together; False when there was none."""
        return bool(
            self.db.run(
                lambda c: (
                    c.execute(
                        "DELETE FROM cvserve_files WHERE id = %s AND project = %s",
                        (file_id, project),
                    ).rowcount
                )
            )
            == 1
        )

    def expired(self, older_than_ms: int, limit: int, after_id: int = 0) -> list[FileMeta]:
        """Up to `limit` files (every project) not updated for `older_than_ms`, by id."""
        rows = self.db.run(
            lambda c: c.execute(
                f"SELECT {_FILE_COLUMNS} FROM cvserve_files"
                f" WHERE last_updated_time < {NOW_MS} - %s AND id > %s ORDER BY id LIMIT %s",
                (older_than_ms, after_id, limit),
            ).fetchall()
        )
        return [_meta(r) for r in rows]

    def free_bytes(self) -> int | None:
        """Unknown here: the bytes go to the database's disk, on its own machine."""
        return None

    def _one(self, sql: str, params: tuple[Any, ...]) -> FileMeta | None:
        row = self.db.run(lambda c: c.execute(sql, params).fetchone())
        return _meta(row) if row is not None else None
