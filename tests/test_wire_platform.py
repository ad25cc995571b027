"""The platform's JSON for files and segment jobs: what the server encodes, the typed
decoder reads back, field by field, for a job in each state (queued, completed with
segments, failed with failedItems, failed without a handler's verdict) and for files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvserve.jobs.db import Database
from cvserve.jobs.files import FileStore
from cvserve.jobs.polygons import segments_json
from cvserve.jobs.queue import JobQueue, JobStatus
from cvserve.wire.platform import file_json, job_json, parse_job, submitted_json

PAYLOAD = {
    "items": [{"fileId": 7, "fileExternalId": "cat.png"}],
    "points": [{"x": 0.25, "y": 0.5, "label": 1}, {"x": 0.75, "y": 0.5, "label": 0}],
    "boundingBox": {"xMin": 0.1, "yMin": 0.2, "xMax": 0.6, "yMax": 0.9},
    "model": "mobilesam/1",
}


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(Database(tmp_path / "jobs.db"))


def test_submitted_and_queued_job_round_trip(queue: JobQueue) -> None:
    job = queue.submit("segment", "p", PAYLOAD)
    for body in (submitted_json(job), job_json(job)):
        back = parse_job(body)
        assert back.job_id == job.id
        assert back.status == "Queued" and not back.done
        assert back.created_time == job.created_time == back.start_time
        assert back.status_time == job.status_time
        assert [(i.file_id, i.file_external_id) for i in back.items] == [(7, "cat.png")]
        assert back.points == PAYLOAD["points"]
        assert back.bounding_box == PAYLOAD["boundingBox"]
        assert back.error_message is None and back.failed_items == []
    assert "prompt" not in submitted_json(job) and "points" in submitted_json(job)
    assert "prompt" in job_json(job) and "points" not in job_json(job)


def test_completed_job_segments_round_trip(queue: JobQueue) -> None:
    mask = np.zeros((40, 60), bool)
    mask[5:20, 10:30] = True
    mask[25:35, 40:55] = True
    segments = segments_json(mask, 0.875)
    queue.submit("segment", "p", PAYLOAD)
    running = queue.claim(["segment"])
    assert running is not None and running.start_time is not None
    item = {**PAYLOAD["items"][0], "segments": segments}
    assert queue.complete(running.id, running.attempt, {"items": [item]})
    done = queue.get(running.id)
    assert done is not None and done.status is JobStatus.COMPLETED
    back = parse_job(job_json(done))
    assert back.status == "Completed" and back.done
    assert back.start_time == running.start_time
    (got,) = back.items
    assert (got.file_id, got.file_external_id) == (7, "cat.png")
    assert len(got.segments) == 1 and got.segments[0].score == 0.875
    polygons = got.segments[0].polygons
    assert len(polygons) == 2  # two separate regions, largest first
    raw = segments[0]["polygons"]
    for poly, raw_poly in zip(polygons, raw, strict=True):
        assert poly.confidence == raw_poly["confidence"] == 0.875
        assert [(v.x, v.y, v.confidence) for v in poly.vertices] == [
            (v["x"], v["y"], v["confidence"]) for v in raw_poly["vertices"]
        ]
    xs = [v.x for v in polygons[0].vertices]
    assert min(xs) == pytest.approx(10 / 60, abs=1e-6) and max(xs) == pytest.approx(29 / 60)


def test_failed_jobs_round_trip(queue: JobQueue) -> None:
    queue.submit("segment", "p", PAYLOAD)
    job = queue.claim(["segment"])
    assert job is not None
    verdict = {
        "items": [],
        "failedItems": [{"errorMessage": "file not found", "items": PAYLOAD["items"]}],
    }
    assert queue.fail(job.id, job.attempt, "file not found", result=verdict)
    stored = queue.get(job.id)
    assert stored is not None
    back = parse_job(job_json(stored))
    assert back.status == "Failed" and back.error_message == "file not found"
    assert back.items == []
    (failed,) = back.failed_items
    assert failed.error_message == "file not found"
    assert [(i.file_id, i.file_external_id) for i in failed.items] == [(7, "cat.png")]

    # failed with no handler verdict (e.g. it gave up): the payload's items are the failed ones
    queue.submit("segment", "p", PAYLOAD)
    job = queue.claim(["segment"])
    assert job is not None and queue.fail(job.id, job.attempt, "gave up")
    stored = queue.get(job.id)
    assert stored is not None
    back = parse_job(job_json(stored))
    assert back.error_message == "gave up"
    assert [f.error_message for f in back.failed_items] == ["gave up"]
    assert back.failed_items[0].items[0].file_id == 7


def test_file_json(tmp_path: Path) -> None:
    files = FileStore(Database(tmp_path / "jobs.db"), tmp_path / "files")
    meta = files.create("p", "cat.png", "image/png", "cat-1")
    out = file_json(meta, "http://h/api/v1/projects/p/files/1/content")
    assert out == {
        "id": meta.id,
        "externalId": "cat-1",
        "name": "cat.png",
        "mimeType": "image/png",
        "uploaded": False,
        "createdTime": meta.created_time,
        "lastUpdatedTime": meta.last_updated_time,
        "uploadUrl": "http://h/api/v1/projects/p/files/1/content",
    }
    stored = files.write(meta, b"\x89PNG...")
    out = file_json(stored)
    assert out["uploaded"] is True and "uploadUrl" not in out
    assert out["uploadedTime"] == stored.uploaded_time
