"""Prometheus metrics (served at GET /metrics), in a per-app registry (never the process-global one).

Requests by route and status, latency by route, per-model queue wait, inference time and
outcomes (fed by the engine's admission listeners), queue depth and requests running,
loaded models, model loads, load time, evictions and resident bytes per model, and jobs
by status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cvserve.engine import EngineAPI, LoadedModel
from cvserve.jobs.service import JobsService

LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_STATUSES = ("Queued", "Running", "Completed", "Failed")


class Metrics:
    """The server's metrics; it listens to the engine (an `EngineListener`)."""

    def __init__(self, engine: EngineAPI, jobs: JobsService) -> None:
        self.engine = engine
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
        self.inference_seconds = Histogram(
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
        self.loads = Counter("cvserve_model_loads", "Model loads by model", ["model"], registry=r)
        self.load_seconds = Histogram(
            "cvserve_model_load_duration_seconds",
            "Time to load a model (its sessions built), by model",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.evictions = Counter(
            "cvserve_model_evictions",
            "Models unloaded to stay within the model budget, by model",
            ["model"],
            registry=r,
        )
        self._gauges = _LiveGauges(engine, jobs)
        r.register(self._gauges)
        engine.subscribe(self)

    # -- the engine's events ---------------------------------------------------------------
    def inference(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        self.outcomes.labels(model_id, outcome).inc()
        if outcome in ("ok", "error", "deadline"):
            self.queue_wait.labels(model_id).observe(queued_s)
            self.inference_seconds.labels(model_id).observe(run_s)

    def loaded(self, model_id: str, seconds: float) -> None:
        self.loads.labels(model_id).inc()
        self.load_seconds.labels(model_id).observe(seconds)

    def evicted(self, model_id: str) -> None:
        self.evictions.labels(model_id).inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    async def exposition(self) -> bytes:
        """The scrape: what is loaded comes from the engine (on Ray, its replicas), then
        the text is rendered off the event loop (the jobs gauge reads the database)."""
        self._gauges.models = await self.engine.loaded()
        return await asyncio.to_thread(generate_latest, self.registry)


class _LiveGauges(Collector):
    """Gauges read at scrape time from the live engine, store and job queue."""

    def __init__(self, engine: EngineAPI, jobs: JobsService) -> None:
        self.engine = engine
        self.jobs = jobs
        self.models: list[LoadedModel] = []  # set before each scrape

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        queued = GaugeMetricFamily(
            "cvserve_model_queue_depth", "Admitted images waiting for a worker", labels=["model"]
        )
        running = GaugeMetricFamily(
            "cvserve_model_in_flight", "Images being processed on a worker", labels=["model"]
        )
        for model_id, (q, r) in sorted(self.engine.activity().items()):
            queued.add_metric([model_id], q)
            running.add_metric([model_id], r)
        yield queued
        yield running
        loaded = GaugeMetricFamily("cvserve_models_loaded", "Models loaded in memory")
        loaded.add_metric([], len(self.models))
        yield loaded
        resident = GaugeMetricFamily(
            "cvserve_model_resident_bytes",
            "Resident memory of each loaded model (the process's growth across its load)",
            labels=["model"],
        )
        for model in self.models:
            resident.add_metric([model.model_id], model.resident_bytes)
        yield resident
        counts = self._job_counts()
        if counts is not None:
            jobs = GaugeMetricFamily("cvserve_jobs", "Segment jobs by status", labels=["status"])
            for status in JOB_STATUSES:
                jobs.add_metric([status], counts.get(status, 0))
            for status, n in sorted(counts.items()):
                if status not in JOB_STATUSES:
                    jobs.add_metric([status], n)
            yield jobs
            sweeper = self.jobs.sweeper
            removed = CounterMetricFamily(
                "cvserve_retention_removed",
                "Finished jobs and files removed by the retention sweep since start",
                labels=["kind"],
            )
            removed.add_metric(["jobs"], sweeper.removed_jobs)
            removed.add_metric(["files"], sweeper.removed_files)
            yield removed

    def _job_counts(self) -> dict[str, int] | None:
        try:
            return {str(k): int(v) for k, v in self.jobs.queue.counts().items()}
        except Exception:  # a scrape must not fail because the jobs database is busy
            return None
