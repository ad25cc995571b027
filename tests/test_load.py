"""Bounded load test against a live `cvserve serve` on 127.0.0.1: more concurrent clients
than inference lanes, a mix of good and hostile requests. Nothing but the expected answers
(and honest 503s with Retry-After) may come back, and resident memory stays flat after
warm-up. The short run (~20 s) always runs; the long soak is marked slow."""

from __future__ import annotations

import base64
import collections
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.hostile_support import (
    CLS_ID,
    DET_ID,
    LiveServer,
    add_classifier,
    add_detector,
    encode,
    png_bomb,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Request:
    name: str
    send: Callable[[httpx.Client], httpx.Response]
    expect: tuple[int, ...]


def _mix() -> list[Request]:
    sizes = [(64, 48), (320, 240), (640, 480), (37, 300)]
    pngs = [base64.b64encode(encode("PNG", w, h)) for w, h in sizes]
    jpegs = [encode("JPEG", w, h) for w, h in sizes]
    truncated = base64.b64encode(encode("JPEG", 320, 240)[:900])
    bomb = png_bomb()

    def infer_body(i: int) -> dict:
        return {
            "model_id": DET_ID,
            "image": [{"type": "base64", "value": pngs[i % len(pngs)].decode()}] * 2,
            "confidence": 0.3,
        }

    good = [
        Request(
            f"det b64 {i}",
            lambda c, b=b: c.post(f"/{DET_ID}", content=b, headers=FORM),
            (200,),
        )
        for i, b in enumerate(pngs)
    ]
    good += [
        Request(
            f"cls raw jpeg {i}",
            lambda c, b=b: c.post(f"/{CLS_ID}", content=b),
            (200,),
        )
        for i, b in enumerate(jpegs)
    ]
    good += [
        Request(
            "det multipart image_and_json",
            lambda c: c.post(
                f"/{DET_ID}",
                params={"format": "image_and_json", "labels": "true"},
                files={"file": ("a.jpg", jpegs[1], "image/jpeg")},
            ),
            (200,),
        ),
        Request(
            "sdk infer batch of 2",
            lambda c: c.post("/infer/object_detection", json=infer_body(random.randrange(4))),
            (200,),
        ),
    ]
    bad = [
        Request(
            "bad base64", lambda c: c.post(f"/{DET_ID}", content=b"%%%%", headers=FORM), (400,)
        ),
        Request(
            "truncated jpeg",
            lambda c: c.post(f"/{DET_ID}", content=truncated, headers=FORM),
            (400,),
        ),
        Request("bomb", lambda c: c.post(f"/{DET_ID}", content=bomb), (413,)),
        Request("unknown model", lambda c: c.post("/nope/9", content=pngs[0]), (404,)),
        Request(
            "bad param",
            lambda c: c.post(f"/{DET_ID}", params={"confidence": "nan"}, content=pngs[0]),
            (400,),
        ),
        Request("empty body", lambda c: c.post(f"/{DET_ID}", content=b""), (400,)),
        Request("sdk junk", lambda c: c.post("/infer/object_detection", content=b"{"), (400,)),
    ]
    return good * 3 + bad  # mostly good traffic, a steady trickle of hostile requests


@dataclass
class Stats:
    counts: collections.Counter = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_loop(url: str, mix: list[Request], stop_at: float, seed: int, stats: Stats) -> None:
    rnd = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            req = rnd.choice(mix)
            t0 = time.perf_counter()
            try:
                r = req.send(client)
            except httpx.HTTPError as e:
                with stats.lock:
                    stats.unexpected.append(f"{req.name}: {type(e).__name__} {e}")
                continue
            elapsed = time.perf_counter() - t0
            ok = r.status_code in req.expect
            honest_503 = r.status_code == 503 and int(r.headers.get("retry-after", "0")) >= 1
            with stats.lock:
                stats.counts[(req.name, r.status_code)] += 1
                stats.latencies.append(elapsed)
                if not ok and not honest_503:
                    stats.unexpected.append(f"{req.name}: {r.status_code} {r.text[:200]}")
                elif r.status_code >= 400 and r.status_code != 503:
                    body = r.json()
                    if not isinstance(body.get("message"), str):
                        stats.unexpected.append(f"{req.name}: no message in {body}")


def run_load(
    models_dir: Path, log_path: Path, *, seconds: float, clients: int, warmup_s: float
) -> dict:
    env = {"CVSERVE_MAX_QUEUE": "4", "CVSERVE_LOG_LEVEL": "warning"}
    with LiveServer(models_dir, log_path, env=env) as server:
        mix = _mix()
        with httpx.Client(base_url=server.url, timeout=60) as c:  # load the models
            for req in mix:
                req.send(c)
        stats = Stats()
        start = time.monotonic()
        stop_at = start + seconds
        threads = [
            threading.Thread(target=_client_loop, args=(server.url, mix, stop_at, i, stats))
            for i in range(clients)
        ]
        for t in threads:
            t.start()
        samples: list[tuple[float, int]] = []
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - start, server.rss_kb()))
            time.sleep(0.5)
        for t in threads:
            t.join(90)
        samples.append((time.monotonic() - start, server.rss_kb()))
        assert server.alive()
        health = httpx.get(server.url + "/healthz", timeout=5).status_code
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
    after_warmup = [kb for t, kb in samples if t >= warmup_s]
    baseline = after_warmup[0]
    # Median of the last few samples: robust to one sample taken mid-request.
    tail = sorted(kb for _, kb in samples[-5:])[len(samples[-5:]) // 2]
    total = sum(stats.counts.values())
    lat = sorted(stats.latencies)
    return {
        "requests": total,
        "rps": total / seconds,
        "statuses": dict(
            collections.Counter(s for (_, s), n in stats.counts.items() for _ in range(n))
        ),
        "unexpected": stats.unexpected,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
        "rss_start_kb": samples[0][1],
        "rss_after_warmup_kb": baseline,
        "rss_end_kb": tail,
        "rss_peak_kb": max(kb for _, kb in samples),
        "drift_kb": tail - baseline,
        "health": health,
        "metrics_ok": "cvserve_http_requests_total" in metrics,
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load") / "models"
    add_detector(root)
    add_classifier(root)
    return root


def _check(result: dict, drift_bound_kb: int) -> None:
    print("load result:", json.dumps({k: v for k, v in result.items() if k != "unexpected"}))
    print(f"RSS drift after warm-up: {result['drift_kb'] / 1024:.1f} MiB")
    assert not result["unexpected"], result["unexpected"][:20]
    assert result["health"] == 200 and result["metrics_ok"]
    assert result["statuses"].get(200, 0) > result["requests"] * 0.3, result["statuses"]
    assert not any(s >= 500 and s != 503 for s in result["statuses"]), result["statuses"]
    assert result["drift_kb"] < drift_bound_kb, (
        f"resident memory grew {result['drift_kb']} kB after warm-up "
        f"({result['rss_after_warmup_kb']} -> {result['rss_end_kb']} kB)"
    )


def test_load_short(models_dir: Path, tmp_path: Path) -> None:
    result = run_load(models_dir, tmp_path / "server.log", seconds=20, clients=6, warmup_s=6)
    _check(result, drift_bound_kb=40 * 1024)


@pytest.mark.slow
def test_load_soak(models_dir: Path, tmp_path: Path) -> None:
    result = run_load(models_dir, tmp_path / "server.log", seconds=150, clients=10, warmup_s=30)
    _check(result, drift_bound_kb=40 * 1024)
