"""Streams persisted like jobs: one SQLite file in the data dir, so a restarted server
knows every stream and resumes the ones that were running.

Each row holds the request as given (the source with its credentials, needed to reopen it;
the file sits in the operator's data dir, never in an answer) and the last stream object
shown (credentials already redacted). Writes happen on status changes only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

DB_NAME = "streams.sqlite3"
ACTIVE = ("starting", "running", "reconnecting")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    object TEXT NOT NULL
)
"""


class StreamStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SCHEMA)

    def save(self, obj: dict[str, Any], request: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO streams (id, request, status, created, updated, object) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "status = excluded.status, updated = excluded.updated, object = excluded.object",
                (
                    obj["id"],
                    json.dumps(request),
                    obj["status"],
                    obj["created"],
                    obj["updated"],
                    json.dumps(obj),
                ),
            )

    def get(self, stream_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT object FROM streams WHERE id = ?", (stream_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def objects(self) -> list[dict[str, Any]]:
        """Every stream's last saved object, newest first."""
        with self._lock:
            rows = self._conn.execute("SELECT object FROM streams ORDER BY created DESC").fetchall()
        return [json.loads(r[0]) for r in rows]

    def active(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(object, request) of the streams that were running when the server stopped."""
        marks = ",".join("?" * len(ACTIVE))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT object, request FROM streams WHERE status IN ({marks}) ORDER BY created",
                ACTIVE,
            ).fetchall()
        return [(json.loads(o), json.loads(r)) for o, r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
