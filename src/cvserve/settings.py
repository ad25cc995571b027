"""The one settings object. Built by the CLI (from flags, then env vars), passed in everywhere.

Each field's default and its environment name (`CVSERVE_` + the field name in capitals)
live here and nowhere else; the CLI's flags take theirs from `Settings.default` and
`Settings.env_name`. Nothing reads the environment at import time, and `Settings(...)`
reads none at all: `Settings.from_env` is called explicitly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from cvserve.cpus import available_cores

if TYPE_CHECKING:
    from cvserve.models.runtime import RuntimeOptions

ENV_PREFIX = "CVSERVE_"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cvserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # CVSERVE_X= (empty) means the default, as it always did
        frozen=True,
        extra="forbid",
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    models_dir: Path | None = None  # defaults to data_dir / "models"
    host: str = "127.0.0.1"
    port: int = 9001
    # Lists: comma- (or space-) separated in the environment, never JSON.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    allow_url_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # Inference lanes per model: each lane owns an ONNX Runtime session with cores/lanes threads.
    # 0 (auto): one single-threaded lane per core, plus one session using every core for
    # runs that start while the model is idle (measured best for latency and throughput).
    workers: int = 0
    intra_op_threads: int = 0  # 0: cores / lanes
    # The runtime each model's sessions run on (a model's manifest may set its own):
    # onnxruntime; openvino (the `openvino` extra); auto: OpenVINO where its f32 outputs equal
    # ONNX Runtime's within 1e-5 relative on the model's check input and it is faster,
    # measured once per model file (cached in the model folder's .runtime.json), else ONNX
    # Runtime. runtime_precision bf16 (OpenVINO, opt-in) is faster and not exact.
    # Default onnxruntime: on the 2-core AMD EPYC (AVX512-BF16, no AMX) this was measured on,
    # OpenVINO f32 was 0.8-1.03x ONNX Runtime at a lane's one thread (bench/runtimes.py), so
    # auto mostly kept ONNX Runtime after 1-5 s of measuring per file; on AMX Xeons (1.2-1.5x
    # in issue 13) `--runtime auto` pays.
    runtime: Literal["auto", "onnxruntime", "openvino"] = "onnxruntime"
    runtime_precision: Literal["f32", "bf16"] = "f32"
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 80_000_000
    max_image_side: int = 20_000
    fetch_connect_timeout_s: float = 5.0
    fetch_total_timeout_s: float = 15.0
    fetch_max_bytes: int = 20 * 1024 * 1024
    fetch_max_redirects: int = 5
    request_timeout_s: float = 60.0
    max_queue: int = 64  # requests waiting per model before 503
    rate_limit_per_minute: int = 0  # per API key; 0 disables
    auto_pull: bool = True  # pull the default real models when the store is empty
    job_workers: int = 1
    # A running job whose worker stops renewing its lease for this long is run again elsewhere.
    job_lease_s: float = Field(default=60.0, gt=0)
    # postgresql://...: jobs and files (metadata and bytes) in PostgreSQL, shared by every
    # replica; None: SQLite + the data dir's files/ folder. Kept out of repr (a password).
    database_url: str | None = Field(default=None, repr=False)
    log_level: str = "info"
    # Ray Serve (`cvserve serve --ray`): model replicas, each with its CPU share (its ONNX
    # Runtime threads follow it), autoscaling bounds (0, 0: a fixed count), models per replica.
    ray_model_replicas: int = 1
    ray_replica_cpus: float = 1.0
    ray_min_replicas: int = 0
    ray_max_replicas: int = 0
    ray_models_per_replica: int = 3
    ray_job_replicas: int = 1  # replicas running job workers (job_workers threads each)
    # Ray actors that run the video streams (each calls the model replicas per frame); a
    # stream whose worker stops renewing its lease (stream_lease_s) moves to another one.
    ray_stream_workers: int = Field(default=2, ge=0)
    # colocated: proxy -> replicas that run the doors and the models (one hop, each replica
    # loads what it is asked for); split: proxy -> ingress -> model replicas multiplexed by
    # model id (two hops; each replica holds a share of many models). bench/ray_bench.py.
    ray_layout: Literal["colocated", "split"] = "colocated"
    # Job and file lifecycle (cvserve.jobs.lifecycle): finished jobs and files older than
    # these are removed in the background (0: kept forever; fractions allowed); uploads that
    # would leave less than min_free_disk_mb free where file bytes go get 507 (0: no floor).
    job_retention_hours: float = Field(default=0.0, ge=0)
    file_retention_hours: float = Field(default=0.0, ge=0)
    min_free_disk_mb: float = Field(default=100.0, ge=0)
    # Model budget (0: unbounded): past it, the least recently used idle model is unloaded
    # before another loads (cvserve.engine.residency). Preloaded models load at start, pinned.
    max_loaded_models: int = Field(default=0, ge=0)
    model_memory_mb: int = Field(default=0, ge=0)
    preload: Annotated[tuple[str, ...], NoDecode] = ()
    # Video streams (cvserve.streams, the `streams` extra): at most max_streams at once;
    # file sources only under stream_dirs; network sources pass the ?image= SSRF policy
    # unless a host, IP or CIDR is in allow_stream_nets (never by default).
    max_streams: int = Field(default=8, ge=0)
    stream_dirs: Annotated[tuple[Path, ...], NoDecode] = ()
    allow_stream_nets: Annotated[tuple[str, ...], NoDecode] = ()
    stream_open_timeout_s: float = Field(default=10.0, gt=0)
    stream_read_timeout_s: float = Field(default=10.0, gt=0)
    # A source that never connects ends `failed` after this; one that dropped retries with
    # backoff (doubling from 0.5 s) capped at stream_retry_max_s, until back or stopped.
    stream_connect_deadline_s: float = Field(default=60.0, gt=0)
    stream_retry_max_s: float = Field(default=30.0, gt=0)
    stream_event_buffer: int = Field(default=1000, ge=1000)
    stream_lease_s: float = Field(default=6.0, ge=1.0)

    @field_validator(
        "api_keys", "allow_url_hosts", "preload", "stream_dirs", "allow_stream_nets", mode="before"
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(s for s in re.split(r"[,\s]+", value) if s)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: Any,
        env_settings: Any,
        dotenv_settings: Any,
        file_secret_settings: Any,
    ) -> tuple[Any, ...]:
        # Only the given values: the environment is read by from_env, on request.
        return (init_settings,)

    @property
    def store_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def cores(self) -> int:
        return available_cores()

    def lanes(self) -> int:
        """Inference lanes per model: `workers`, or one per core when it is 0 (auto)."""
        return self.workers if self.workers > 0 else self.cores

    def threads_per_lane(self) -> int:
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        return max(1, self.cores // self.lanes())

    def wide_threads(self) -> int:
        """Threads of the extra all-core session (auto layout only; 0: none)."""
        return self.cores if self.workers <= 0 and self.cores > 1 else 0

    def runtime_options(
        self,
        lanes: int | None = None,
        threads_per_lane: int | None = None,
        wide_threads: int | None = None,
    ) -> RuntimeOptions:
        """The sessions' layout and runtime (lanes, threads: this server's auto layout unless given)."""
        from cvserve.models.runtime import RuntimeOptions

        return RuntimeOptions(
            lanes=self.lanes() if lanes is None else lanes,
            threads_per_lane=self.threads_per_lane()
            if threads_per_lane is None
            else threads_per_lane,
            wide_threads=self.wide_threads() if wide_threads is None else wide_threads,
            runtime=self.runtime,
            precision=self.runtime_precision,
        )

    def with_overrides(self, **overrides: object) -> Settings:
        """Copy with the given fields replaced (validated); None values are ignored."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        return type(self)(**{**self.model_dump(), **given})

    @classmethod
    def default(cls, name: str) -> Any:
        """Field `name`'s default (what the CLI shows for a flag left out)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def env_name(cls, name: str, prefix: str = ENV_PREFIX) -> str:
        """The environment variable that sets field `name`, e.g. CVSERVE_MAX_QUEUE."""
        if name not in cls.model_fields:
            raise KeyError(name)
        return prefix + name.upper()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX
    ) -> Settings:
        """Settings from CVSERVE_* variables (lists comma-separated). Called by the CLI only."""
        source = _EnvSource(cls, os.environ if environ is None else environ, prefix)
        return cls(**source())


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (tests pass a dict)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str], prefix: str):
        self._environ = environ
        super().__init__(settings_cls, env_prefix=prefix)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )
