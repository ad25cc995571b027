"""Everything the routes share, built once per app from the settings (nothing global)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from cvserve.engine import EngineAPI, LocalEngine
from cvserve.http.auth import KeyChecker
from cvserve.http.metrics import Metrics
from cvserve.http.ratelimit import RateLimiter
from cvserve.jobs.service import JobsService
from cvserve.settings import Settings
from cvserve.streams import StreamManager
from cvserve.streams.api import StreamsAPI


@dataclass
class AppState:
    settings: Settings
    keys: KeyChecker
    engine: EngineAPI
    jobs: JobsService
    metrics: Metrics
    streams: StreamsAPI
    jobs_ready: threading.Event = field(default_factory=threading.Event)  # set by the lifespan


def build_state(
    settings: Settings, engine: EngineAPI | None = None, streams: StreamsAPI | None = None
) -> AppState:
    """The one place the server's parts are built and wired together. `engine`: the
    engine under the doors (Ray Serve's, or a LocalEngine over a given store); default:
    a LocalEngine over the settings' store. `streams`: default, this process runs them."""
    engine = engine or LocalEngine.from_settings(settings)
    jobs = JobsService(settings, engine)
    metrics = Metrics(engine, jobs)
    return AppState(
        settings=settings,
        keys=KeyChecker(settings.api_keys, RateLimiter(settings.rate_limit_per_minute)),
        engine=engine,
        jobs=jobs,
        metrics=metrics,
        streams=streams or StreamManager(settings, engine),
    )
