"""Everything the routes share, built once per app from the settings (nothing global)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from cvserve.engine import Engine
from cvserve.http.auth import KeyChecker
from cvserve.http.metrics import Metrics
from cvserve.http.ratelimit import RateLimiter
from cvserve.jobs.service import JobsService
from cvserve.models.store import ModelStore
from cvserve.settings import Settings


@dataclass
class AppState:
    settings: Settings
    store: ModelStore
    keys: KeyChecker
    engine: Engine
    jobs: JobsService
    metrics: Metrics
    jobs_ready: threading.Event = field(default_factory=threading.Event)  # set by the lifespan


def build_state(
    settings: Settings, store: ModelStore | None = None, engine: Engine | None = None
) -> AppState:
    """The one place the server's parts are built and wired together (`engine`: another
    engine under the same doors, such as Ray Serve's ingress forwarding to replicas)."""
    if store is None:
        store = ModelStore(settings.store_dir, settings.runtime_options())
    engine = engine or Engine(settings, store)
    jobs = JobsService(settings, engine)
    metrics = Metrics(engine, store, jobs)
    return AppState(
        settings=settings,
        store=store,
        keys=KeyChecker(settings.api_keys, RateLimiter(settings.rate_limit_per_minute)),
        engine=engine,
        jobs=jobs,
        metrics=metrics,
    )
