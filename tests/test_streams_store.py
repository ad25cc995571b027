"""The streams' store on SQLite and on a real PostgreSQL: what a row keeps, and the leases
Ray's stream workers hold (claim, renew, expiry, take-over)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvserve.settings import Settings
from cvserve.streams.store import StreamStore, open_stream_store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StreamStore]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    s = open_stream_store(Settings(data_dir=tmp_path, database_url=url))
    yield s
    s.close()


def obj(sid: str, status: str = "running", created: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "status": status, "created": created, "updated": created, **extra}


def test_a_row_keeps_the_request_and_the_last_object(store):
    store.save(obj("s_a", "starting"), {"source": "rtsp://u:pw@cam/1", "model_id": "m/1"})
    store.save(obj("s_a", "running", frames=3), {})  # an update keeps the request
    assert store.get("s_a") == obj("s_a", "running", frames=3)
    assert store.active() == [(obj("s_a", "running", frames=3),
                               {"source": "rtsp://u:pw@cam/1", "model_id": "m/1"})]  # fmt: skip
    store.save(obj("s_b", "completed", created=2), {})
    assert [o["id"] for o in store.objects()] == ["s_b", "s_a"]  # newest first
    assert store.count_active() == 1 and store.get("nope") is None


def test_leases_are_held_renewed_and_taken_over_when_they_run_out(store):
    for sid in ("s_1", "s_2"):
        store.save(obj(sid), {"n": sid})
    assert store.owner("s_1") is None
    assert store.claim("s_1", "w0", 60_000, expired_only=False)
    assert store.claim("s_2", "w0", 300, expired_only=False)
    assert store.owner("s_1") == "w0"
    # A live lease is not taken; an expired one is, by one worker only.
    assert not store.claim("s_1", "w1", 60_000, expired_only=True)
    assert [o[0]["id"] for o, _ in store.orphans()] == []
    time.sleep(0.4)
    assert [(o[0]["id"], lost) for o, lost in store.orphans()] == [("s_2", "w0")]
    assert store.claim("s_2", "w1", 60_000, expired_only=True)
    assert not store.claim("s_2", "w0", 60_000, expired_only=True)
    assert store.owner("s_2") == "w1" and store.orphans() == []
    # Renewal keeps only what the worker still holds on active streams.
    assert store.renew("w0", ["s_1", "s_2"], 60_000) == {"s_1"}
    store.save(obj("s_1", "stopped"), {})  # stopped through the store: no longer renewed
    assert store.renew("w0", ["s_1"], 60_000) == set()
    assert not store.claim("s_1", "w1", 60_000, expired_only=False)  # ended: nobody's


def test_a_restarted_server_resumes_its_own_streams_not_another_servers(store):
    store.save(obj("s_mine"), {})
    store.save(obj("s_theirs", created=2), {})
    store.save(obj("s_old", created=3), {})  # written before leases: nobody's
    store.claim("s_mine", "server:a", 60_000, expired_only=False)
    store.claim("s_theirs", "server:b", 60_000, expired_only=False)
    assert [o["id"] for o, _ in store.owned("server:a")] == ["s_mine", "s_old"]


def test_a_streams_file_of_an_older_server_gains_the_lease_columns(tmp_path):
    path = tmp_path / "streams.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE streams (id TEXT PRIMARY KEY, request TEXT NOT NULL, status TEXT NOT "
        "NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL, object TEXT NOT NULL)"
    )
    conn.execute(
        "INSERT INTO streams VALUES ('s_old', '{}', 'running', 1, 1, ?)",
        ('{"id": "s_old", "status": "running"}',),
    )
    conn.commit()
    conn.close()
    store = open_stream_store(Settings(data_dir=tmp_path))
    try:
        assert [o[0]["id"] for o, lost in store.orphans()] == ["s_old"]
        assert store.claim("s_old", "w0", 60_000, expired_only=True)
    finally:
        store.close()
