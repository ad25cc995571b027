"""Streams persisted like jobs: SQLite in the data dir, or PostgreSQL when `database_url` is
set (then every server and Ray stream worker shares them), so a restarted server knows
every stream and resumes the ones that were running.

Each row holds the request as given (the source with its credentials, needed to reopen it;
it sits in the operator's database, never in an answer) and the last stream object shown
(credentials already redacted). On Ray a row also names its owner, the stream worker
running it, and the time its lease ends: a worker renews its leases while it lives, and
another one takes up a stream whose lease ran out.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cvserve.settings import Settings

if TYPE_CHECKING:
    from cvserve.jobs.pg_database import PostgresDatabase

DB_NAME = "streams.sqlite3"
ACTIVE = ("starting", "running", "reconnecting")
Stored = tuple[dict[str, Any], dict[str, Any]]  # (the stream object, its request)


class StreamStore(Protocol):
    def save(self, obj: dict[str, Any], request: dict[str, Any]) -> None:
        """Insert, or update the object and status (the request and owner stay)."""

    def get(self, stream_id: str) -> dict[str, Any] | None: ...

    def owner(self, stream_id: str) -> str | None:
        """The worker that holds the stream's lease (None: nobody, or not on Ray)."""

    def objects(self) -> list[dict[str, Any]]:
        """Every stream's last saved object, newest first."""

    def active(self) -> list[Stored]:
        """The streams that were running (oldest first), whoever ran them."""

    def owned(self, owner: str) -> list[Stored]:
        """The active streams `owner` (or nobody) held: what a restarted server resumes."""

    def count_active(self) -> int: ...

    def claim(self, stream_id: str, owner: str, lease_ms: int, *, expired_only: bool) -> bool:
        """Take the stream's lease: at once (a new stream) or only if its lease ran out."""

    def orphans(self) -> list[tuple[Stored, str | None]]:
        """Active streams whose lease ran out, with their last owner."""

    def renew(self, owner: str, stream_ids: list[str], lease_ms: int) -> set[str]:
        """Extends the leases `owner` still holds on active streams; those ids."""

    def close(self) -> None: ...


def open_stream_store(settings: Settings) -> StreamStore:
    if settings.database_url:
        from cvserve.jobs.pg_database import PostgresDatabase

        return PostgresStreamStore(PostgresDatabase(settings.database_url))
    return SqliteStreamStore(settings.data_dir / DB_NAME)


def _now_ms() -> int:
    return int(time.time() * 1000)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    object TEXT NOT NULL,
    owner TEXT,
    lease_until INTEGER
)
"""
_MARKS = ",".join("?" * len(ACTIVE))


class SqliteStreamStore:
    """One file, shared by the processes of one machine (a server, or a local Ray)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SQLITE_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(streams)")}
        for name, kind in (("owner", "TEXT"), ("lease_until", "INTEGER")):
            if name not in columns:  # a file an older cvserve wrote
                self._conn.execute(f"ALTER TABLE streams ADD COLUMN {name} {kind}")

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _change(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def save(self, obj: dict[str, Any], request: dict[str, Any]) -> None:
        self._change(
            "INSERT INTO streams (id, request, status, created, updated, object) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "status = excluded.status, updated = excluded.updated, object = excluded.object",
            (obj["id"], json.dumps(request), obj["status"], obj["created"], obj["updated"],
             json.dumps(obj)),
        )  # fmt: skip

    def get(self, stream_id: str) -> dict[str, Any] | None:
        rows = self._all("SELECT object FROM streams WHERE id = ?", (stream_id,))
        return json.loads(rows[0][0]) if rows else None

    def owner(self, stream_id: str) -> str | None:
        rows = self._all("SELECT owner FROM streams WHERE id = ?", (stream_id,))
        return rows[0][0] if rows else None

    def objects(self) -> list[dict[str, Any]]:
        rows = self._all("SELECT object FROM streams ORDER BY created DESC")
        return [json.loads(r[0]) for r in rows]

    def active(self) -> list[Stored]:
        rows = self._all(
            f"SELECT object, request FROM streams WHERE status IN ({_MARKS}) ORDER BY created",
            ACTIVE,
        )
        return [(json.loads(o), json.loads(r)) for o, r in rows]

    def owned(self, owner: str) -> list[Stored]:
        rows = self._all(
            f"SELECT object, request FROM streams WHERE status IN ({_MARKS}) "
            "AND (owner IS NULL OR owner = ?) ORDER BY created",
            (*ACTIVE, owner),
        )
        return [(json.loads(o), json.loads(r)) for o, r in rows]

    def count_active(self) -> int:
        return int(
            self._all(f"SELECT count(*) FROM streams WHERE status IN ({_MARKS})", ACTIVE)[0][0]
        )

    def claim(self, stream_id: str, owner: str, lease_ms: int, *, expired_only: bool) -> bool:
        now = _now_ms()
        expired = " AND (lease_until IS NULL OR lease_until < ?)" if expired_only else ""
        params: tuple[Any, ...] = (owner, now + lease_ms, stream_id, *ACTIVE)
        return (
            self._change(
                f"UPDATE streams SET owner = ?, lease_until = ? WHERE id = ? "
                f"AND status IN ({_MARKS}){expired}",
                params + ((now,) if expired_only else ()),
            )
            == 1
        )

    def orphans(self) -> list[tuple[Stored, str | None]]:
        rows = self._all(
            f"SELECT object, request, owner FROM streams WHERE status IN ({_MARKS}) "
            "AND (lease_until IS NULL OR lease_until < ?) ORDER BY created",
            (*ACTIVE, _now_ms()),
        )
        return [((json.loads(o), json.loads(r)), owner) for o, r, owner in rows]

    def renew(self, owner: str, stream_ids: list[str], lease_ms: int) -> set[str]:
        if not stream_ids:
            return set()
        ids = ",".join("?" * len(stream_ids))
        where = f"owner = ? AND id IN ({ids}) AND status IN ({_MARKS})"
        params = (owner, *stream_ids, *ACTIVE)
        with self._lock:
            self._conn.execute(
                f"UPDATE streams SET lease_until = ? WHERE {where}", (_now_ms() + lease_ms, *params)
            )
            rows = self._conn.execute(f"SELECT id FROM streams WHERE {where}", params).fetchall()
        return {r[0] for r in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# Milliseconds on the database's clock: every worker's leases are measured by one clock.
_PG_NOW = "(extract(epoch from clock_timestamp()) * 1000)::bigint"


class PostgresStreamStore:
    """Streams in `cvserve_streams`, beside the jobs (the schema is created with theirs)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self.db.run(lambda conn: list(conn.execute(sql, params).fetchall()))

    def save(self, obj: dict[str, Any], request: dict[str, Any]) -> None:
        self._rows(
            "INSERT INTO cvserve_streams (id, request, status, created, updated, object) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "status = excluded.status, updated = excluded.updated, object = excluded.object "
            "RETURNING id",
            (obj["id"], json.dumps(request), obj["status"], obj["created"], obj["updated"],
             json.dumps(obj)),
        )  # fmt: skip

    def get(self, stream_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT object FROM cvserve_streams WHERE id = %s", (stream_id,))
        return json.loads(rows[0]["object"]) if rows else None

    def owner(self, stream_id: str) -> str | None:
        rows = self._rows("SELECT owner FROM cvserve_streams WHERE id = %s", (stream_id,))
        return rows[0]["owner"] if rows else None

    def objects(self) -> list[dict[str, Any]]:
        rows = self._rows("SELECT object FROM cvserve_streams ORDER BY created DESC")
        return [json.loads(r["object"]) for r in rows]

    def active(self) -> list[Stored]:
        rows = self._rows(
            "SELECT object, request FROM cvserve_streams WHERE status = ANY(%s) ORDER BY created",
            (list(ACTIVE),),
        )
        return [(json.loads(r["object"]), json.loads(r["request"])) for r in rows]

    def owned(self, owner: str) -> list[Stored]:
        rows = self._rows(
            "SELECT object, request FROM cvserve_streams WHERE status = ANY(%s) "
            "AND (owner IS NULL OR owner = %s) ORDER BY created",
            (list(ACTIVE), owner),
        )
        return [(json.loads(r["object"]), json.loads(r["request"])) for r in rows]

    def count_active(self) -> int:
        rows = self._rows(
            "SELECT count(*) AS n FROM cvserve_streams WHERE status = ANY(%s)", (list(ACTIVE),)
        )
        return int(rows[0]["n"])

    def claim(self, stream_id: str, owner: str, lease_ms: int, *, expired_only: bool) -> bool:
        expired = f" AND (lease_until IS NULL OR lease_until < {_PG_NOW})" if expired_only else ""
        rows = self._rows(
            f"UPDATE cvserve_streams SET owner = %s, lease_until = {_PG_NOW} + %s "
            f"WHERE id = %s AND status = ANY(%s){expired} RETURNING id",
            (owner, lease_ms, stream_id, list(ACTIVE)),
        )
        return bool(rows)

    def orphans(self) -> list[tuple[Stored, str | None]]:
        rows = self._rows(
            "SELECT object, request, owner FROM cvserve_streams WHERE status = ANY(%s) "
            f"AND (lease_until IS NULL OR lease_until < {_PG_NOW}) ORDER BY created",
            (list(ACTIVE),),
        )
        return [((json.loads(r["object"]), json.loads(r["request"])), r["owner"]) for r in rows]

    def renew(self, owner: str, stream_ids: list[str], lease_ms: int) -> set[str]:
        if not stream_ids:
            return set()
        rows = self._rows(
            f"UPDATE cvserve_streams SET lease_until = {_PG_NOW} + %s "
            "WHERE owner = %s AND id = ANY(%s) AND status = ANY(%s) RETURNING id",
            (lease_ms, owner, stream_ids, list(ACTIVE)),
        )
        return {r["id"] for r in rows}

    def close(self) -> None:
        self.db.close()
