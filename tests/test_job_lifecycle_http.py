"""Job and file lifecycle over HTTP: listing jobs with limit + cursor, deleting files (both
routes, unknown ids with and without ignoreUnknownIds), the in-use rule (409 naming the
jobs, nothing deleted), the disk guard (507, nothing stored), the OpenAPI document; and on a
real server (LiveServer, uvicorn on a socket) the retention sweep removing finished jobs and
old files, and only those.

Jobs are driven by hand where a test needs them to stay Queued or to finish at a chosen
moment: the server runs no job workers (job_workers=0), and a second storage opened on the
same data dir plays the worker, as another process on the machine would."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cvserve.jobs.stores import Storage, open_storage
from cvserve.models.store import ModelStore
from cvserve.settings import Settings
from tests.support.live_server import LiveServer

P = "/api/v1/projects/acme"
SEGMENT = f"{P}/context/vision/segment"
BETA = {"cdf-version": "beta"}
Client = TestClient | httpx.Client


@pytest.fixture
def client(store: ModelStore, make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(store, job_workers=0)


def upload(c: Client, name: str = "a.png", external_id: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "mimeType": "image/png"}
    if external_id:
        meta["externalId"] = external_id
    r = c.post(f"{P}/files", json=meta)
    assert r.status_code == 201, r.text
    r = c.put(f"{P}/files/{r.json()['id']}/content", content=b"\x89PNG not really")
    assert r.status_code == 200, r.text
    return dict(r.json())


def submit(c: Client, file_id: int) -> int:
    body = {"items": [{"fileId": file_id}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]}
    r = c.post(SEGMENT, json=body, headers=BETA)
    assert r.status_code == 200, r.text
    return int(r.json()["jobId"])


def finish(worker: Storage, job_id: int) -> None:
    """Play the worker: claim the oldest queued job (it must be `job_id`) and complete it."""
    job = worker.queue.claim(["segment"])
    assert job is not None and job.id == job_id
    assert worker.queue.complete(job.id, job.attempt, {"items": []})


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == status and body["message"]
    return dict(body)


# -- listing -----------------------------------------------------------------------------
def test_list_pages_through_every_job_once_newest_first(client: TestClient) -> None:
    f = upload(client)
    ids = [submit(client, f["id"]) for _ in range(7)]
    other = client.post(
        "/api/v1/projects/other/context/vision/segment",
        json={"items": [{"fileId": 999}], "points": [{"x": 0.1, "y": 0.1}]},
        headers=BETA,
    )
    assert other.status_code == 200
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = client.get(SEGMENT, params=params, headers=BETA)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "nextCursor"}
        assert len(body["items"]) <= 3
        seen += [j["jobId"] for j in body["items"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and not cursor.isdigit()  # opaque, not a bare id
    assert seen == sorted(ids, reverse=True) and pages == 3
    job = client.get(SEGMENT, headers=BETA).json()["items"][0]  # default limit: all 7 here
    assert job == client.get(f"{SEGMENT}/{ids[-1]}", headers=BETA).json()
    assert job["status"] == "Queued" and job["prompt"]["points"]
    whole = client.get(SEGMENT, params={"limit": 1000}, headers=BETA).json()
    assert len(whole["items"]) == 7 and whole["nextCursor"] is None
    empty = client.get("/api/v1/projects/nobody/context/vision/segment", headers=BETA).json()
    assert empty == {"items": [], "nextCursor": None}


def test_list_refuses_bad_parameters_naming_them(client: TestClient) -> None:
    for value in ("0", "1001", "abc", "2.5", "-1"):
        body = error(client.get(SEGMENT, params={"limit": value}, headers=BETA), 400)
        assert "limit" in body["message"]
    for value in ("nonsense", "Y3ZzMTow", "!!", "eyJhIjoxfQ"):
        body = error(client.get(SEGMENT, params={"cursor": value}, headers=BETA), 400)
        assert "cursor" in body["message"]
    assert "cdf-version" in error(client.get(SEGMENT), 400)["message"]


# -- deleting files ----------------------------------------------------------------------
def test_delete_routes_remove_metadata_and_bytes(client: TestClient, tmp_path: Path) -> None:
    a, b, c = upload(client, "a.png", "a"), upload(client, "b.png", "b"), upload(client, "c.png")
    folder = tmp_path / "files"
    assert all((folder / str(f["id"])).exists() for f in (a, b, c))
    r = client.delete(f"{P}/files/{a['id']}")
    assert r.status_code == 200 and r.json() == {}
    error(client.get(f"{P}/files/{a['id']}"), 404)
    assert not (folder / str(a["id"])).exists()
    error(client.delete(f"{P}/files/{a['id']}"), 404)  # already gone
    error(client.delete(f"{P}/files/abc"), 400)
    r = client.post(f"{P}/files/delete", json={"items": [{"externalId": "b"}, {"id": c["id"]}]})
    assert r.status_code == 200 and r.json() == {}
    for f in (b, c):
        error(client.get(f"{P}/files/{f['id']}"), 404)
        assert not (folder / str(f["id"])).exists()
    r = client.post(f"{P}/files", json={"name": "b2.png", "externalId": "b"})
    assert r.status_code == 201  # the externalId is free again


def test_delete_unknown_ids_all_or_nothing_unless_ignored(client: TestClient) -> None:
    keep = upload(client, "k.png", "k")
    items = [{"id": keep["id"]}, {"id": 424242}, {"externalId": "nope"}]
    body = error(client.post(f"{P}/files/delete", json={"items": items}), 400)
    assert body["missing"] == [{"id": 424242}, {"externalId": "nope"}]
    assert client.get(f"{P}/files/{keep['id']}").status_code == 200  # nothing deleted
    r = client.post(f"{P}/files/delete", json={"items": items, "ignoreUnknownIds": True})
    assert r.status_code == 200 and r.json() == {}
    error(client.get(f"{P}/files/{keep['id']}"), 404)
    for bad in ({}, {"items": []}, {"items": [{"id": 1, "externalId": "x"}]}, {"items": [{}]}):
        error(client.post(f"{P}/files/delete", json=bad), 400)
    # Another project's file is not this project's to delete.
    theirs = client.post("/api/v1/projects/other/files", json={"name": "t.png"}).json()
    error(client.delete(f"{P}/files/{theirs['id']}"), 404)
    assert client.get(f"/api/v1/projects/other/files/{theirs['id']}").status_code == 200


def test_a_file_a_queued_or_running_job_needs_is_refused_with_409(client: TestClient) -> None:
    needed, free = upload(client, "n.png", "n"), upload(client, "f.png")
    job = submit(client, needed["id"])
    body = error(client.delete(f"{P}/files/{needed['id']}"), 409)
    assert body["inUse"] == [{"id": needed["id"], "externalId": "n", "jobIds": [job]}]
    assert str(job) in body["message"]
    r = client.post(f"{P}/files/delete", json={"items": [{"id": free["id"]}, {"externalId": "n"}]})
    assert error(r, 409)["inUse"][0]["jobIds"] == [job]
    assert client.get(f"{P}/files/{free['id']}").status_code == 200  # all or nothing
    worker = client.app.state.cvserve.jobs  # type: ignore[attr-defined]
    running = worker.queue.claim(["segment"])
    assert running.id == job
    error(client.delete(f"{P}/files/{needed['id']}"), 409)  # Running: still needed
    assert worker.queue.complete(job, running.attempt, {"items": []})
    assert client.delete(f"{P}/files/{needed['id']}").status_code == 200
    # A job whose file vanished anyway fails cleanly with failedItems: that is
    # test_segment_jobs.py's test_missing_file_fails_the_item.


# -- the disk guard ----------------------------------------------------------------------
def test_uploads_below_the_free_space_floor_get_507_and_store_nothing(
    store: ModelStore, make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    client = make_client(store, job_workers=0, min_free_disk_mb=1e12)  # above any disk
    created = client.post(f"{P}/files", json={"name": "a.png", "mimeType": "image/png"})
    assert created.status_code == 201  # metadata is tiny: only content is guarded
    file_id = created.json()["id"]
    body = error(client.put(f"{P}/files/{file_id}/content", content=b"x" * 1000), 507)
    assert "free disk space" in body["message"] and "nothing was stored" in body["message"]
    assert client.get(f"{P}/files/{file_id}").json()["uploaded"] is False
    r = client.post(f"{P}/files/upload", files={"file": ("m.png", b"x" * 1000, "image/png")})
    error(r, 507)
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == []  # no bytes, no temp
    r = client.post(f"{P}/files/byids", json={"items": [{"id": file_id + 1}]})
    assert error(r, 400)["missing"] == [{"id": file_id + 1}]  # no record left by the upload
    ok = make_client(store, data_dir=tmp_path / "roomy", job_workers=0, min_free_disk_mb=0)
    r = ok.post(f"{P}/files/upload", files={"file": ("m.png", b"x" * 1000, "image/png")})
    assert r.status_code == 201


def test_openapi_documents_the_lifecycle_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()["paths"]
    listing = spec[SEGMENT.replace("acme", "{project}")]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert {"limit", "cursor", "cdf-version"} <= set(params)
    assert params["limit"]["in"] == "query" and params["limit"]["schema"]["maximum"] == 1000
    ok = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(ok["properties"]) == {"items", "nextCursor"}
    base = "/api/v1/projects/{project}/files"
    delete = spec[f"{base}/delete"]["post"]
    schema = delete["requestBody"]["content"]["application/json"]["schema"]
    assert {"items", "ignoreUnknownIds"} <= set(schema["properties"])
    assert "409" in delete["responses"] and "delete" in spec[f"{base}/{{file_id}}"]
    assert "507" in spec[f"{base}/upload"]["post"]["responses"]
    assert "507" in spec[f"{base}/{{file_id}}/content"]["put"]["responses"]


# -- retention, on a real server ---------------------------------------------------------
def wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not true after {timeout} s"
        time.sleep(0.05)


def test_retention_on_a_live_server_removes_finished_jobs_and_old_files_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    (tmp_path / "models").mkdir()
    hours = 0.0005  # 1.8 s; swept every 0.18 s
    retention = {"job_retention_hours": hours, "file_retention_hours": hours}
    worker = open_storage(Settings(data_dir=data))
    caplog.set_level(logging.INFO, logger="cvserve.jobs")
    try:
        with (
            LiveServer(tmp_path / "models", data_dir=data, job_workers=0, **retention) as srv,
            httpx.Client(base_url=srv.url, timeout=10) as c,
        ):
            done_file, used_file = upload(c, "d.png"), upload(c, "u.png")
            done_job = submit(c, done_file["id"])
            queued_job = submit(c, used_file["id"])
            finish(worker, done_job)

            def gone(path: str) -> bool:
                return c.get(path, headers=BETA).status_code == 404

            wait_until(
                lambda: gone(f"{SEGMENT}/{done_job}") and gone(f"{P}/files/{done_file['id']}")
            )
            assert not (data / "files" / str(done_file["id"])).exists()
            # The queued job and the (old) file it needs stay.
            assert c.get(f"{SEGMENT}/{queued_job}", headers=BETA).json()["status"] == "Queued"
            assert c.get(f"{P}/files/{used_file['id']}").status_code == 200
            # Young things stay for several sweeps: a new file, a just-finished job.
            young_file, young_free = upload(c, "y.png"), upload(c, "z.png")
            young_job = submit(c, young_file["id"])
            finish(worker, queued_job)  # the oldest queued first
            t0 = time.monotonic()
            wait_until(lambda: gone(f"{P}/files/{used_file['id']}"))  # no longer needed
            time.sleep(max(0.0, 0.6 - (time.monotonic() - t0)))
            if time.monotonic() - t0 < 1.5:  # still well inside the 1.8 s retention
                assert c.get(f"{SEGMENT}/{queued_job}", headers=BETA).json()["status"] == (
                    "Completed"
                )
            assert c.get(f"{P}/files/{young_free['id']}").status_code == 200
            assert c.get(f"{P}/files/{young_file['id']}").status_code == 200
            assert c.get(f"{SEGMENT}/{young_job}", headers=BETA).status_code == 200
            listed = c.get(SEGMENT, headers=BETA).json()["items"]
            assert done_job not in [j["jobId"] for j in listed]
            wait_until(lambda: gone(f"{SEGMENT}/{queued_job}"))
            wait_until(lambda: gone(f"{P}/files/{young_free['id']}"))  # its turn came
            assert c.get(f"{SEGMENT}/{young_job}", headers=BETA).json()["status"] == "Queued"
            assert c.get(f"{P}/files/{young_file['id']}").status_code == 200  # still needed
            metrics = c.get("/metrics").text
            # done_job and queued_job; done_file, used_file and young_free, at least
            assert _sample(metrics, 'cvserve_retention_removed_total{kind="jobs"}') >= 2
            assert _sample(metrics, 'cvserve_retention_removed_total{kind="files"}') >= 3
    finally:
        worker.close()
    assert "retention: removed" in caplog.text


def test_a_disk_that_fills_up_during_the_write_is_a_507_too(
    store: ModelStore,
    make_client: Callable[..., TestClient],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno
    import os

    import cvserve.jobs.files as files_module

    client = make_client(store, job_workers=0, min_free_disk_mb=0)
    created = client.post(f"{P}/files", json={"name": "a.png"}).json()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_module.os, "fsync", full)
    body = error(client.put(f"{P}/files/{created['id']}/content", content=b"x" * 100), 507)
    assert "full" in body["message"]
    assert client.get(f"{P}/files/{created['id']}").json()["uploaded"] is False
    r = client.post(f"{P}/files/upload", files={"file": ("m.png", b"x" * 100, "image/png")})
    error(r, 507)
    r = client.post(f"{P}/files/byids", json={"items": [{"id": created["id"] + 1}]})
    assert error(r, 400)["missing"]  # the one-step upload's record was taken back
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == []  # no temp file left


def _sample(exposition: str, name: str) -> float:
    """The value of one sample line of a Prometheus exposition."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")
