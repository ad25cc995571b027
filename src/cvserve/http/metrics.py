"""Prometheus metrics (served at GET /metrics), in a per-app registry (never the process-global one).

Requests by route and status, latency by route, per-model queue wait, inference time and
outcomes (fed by the engine's admission listeners), queue depth and requests running,
loaded models, and jobs by status.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cvserve.engine import Engine
from cvserve.jobs.service import JobsService
from cvserve.models.store import ModelStore

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_STATUSES = ("Queued", "Running", "Completed", "Failed")


class Metrics:
    def __init__(self, engine: Engine, store: ModelStore, jobs: JobsService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cvserve_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cvserve_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "cvserve_inference_duration_seconds",
            "Worker time per image (decode, predict, render) by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "cvserve_queue_wait_seconds",
            "Time an admitted image waited for a worker, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "cvserve_inference",
            "Inference jobs by model and outcome (ok, error, deadline, cancelled, overloaded)",
            ["model", "outcome"],
            registry=r,
        )
        r.register(_LiveGauges(engine, store, jobs))
        engine.add_listener(self.observe_inference)

    def observe_inference(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        self.outcomes.labels(model_id, outcome).inc()
        if outcome in ("ok", "error", "deadline"):
            self.queue_wait.labels(model_id).observe(queued_s)
            self.inference.labels(model_id).observe(run_s)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveGauges(Collector):
    """Gauges read at scrape time from the live engine, store and job queue."""

    def __init__(self, engine: Engine, store: ModelStore, jobs: JobsService) -> None:
        self.engine = engine
        self.store = store
        self.jobs = jobs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily(
            "cvserve_model_queue_depth", "Admitted images waiting for a worker", labels=["model"]
        )
        running = GaugeMetricFamily(
            "cvserve_model_in_flight", "Images being processed on a worker", labels=["model"]
        )
        for model_id, (q, r) in sorted(self.engine.admission.snapshot().items()):
            queued.add_metric([model_id], q)
            running.add_metric([model_id], r)
        yield queued
        yield running
        loaded = GaugeMetricFamily("cvserve_models_loaded", "Models loaded in memory")
        loaded.add_metric([], sum(1 for m in self.store.ids() if self.store.loaded(m)))
        yield loaded
        counts = self._job_counts()
        if counts is not None:
            jobs = GaugeMetricFamily("cvserve_jobs", "Segment jobs by status", labels=["status"])
            for status in JOB_STATUSES:
                jobs.add_metric([status], counts.get(status, 0))
            for status, n in sorted(counts.items()):
                if status not in JOB_STATUSES:
                    jobs.add_metric([status], n)
            yield jobs

    def _job_counts(self) -> dict[str, int] | None:
        try:
            return {str(k): int(v) for k, v in self.jobs.queue.counts().items()}
        except Exception:  # a scrape must not fail because the jobs database is busy
            return None
