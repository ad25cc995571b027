"""The one settings object. Built by the CLI (from flags, then env vars), passed in everywhere.

Nothing reads the environment at import time; `Settings.from_env` is called explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cvserve"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    models_dir: Path | None = None  # defaults to data_dir / "models"
    host: str = "127.0.0.1"
    port: int = 9001
    api_keys: tuple[str, ...] = ()
    allow_url_hosts: tuple[str, ...] = ()
    # Inference lanes per model: each lane owns an ONNX Runtime session with cores/lanes threads.
    # 0 (auto): one single-threaded lane per core, plus one session using every core for
    # runs that start while the model is idle (measured best for latency and throughput).
    workers: int = 0
    intra_op_threads: int = 0  # 0: cores / lanes
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
    log_level: str = "info"

    @property
    def store_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def cores(self) -> int:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)

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

    def with_overrides(self, **overrides: object) -> Settings:
        """Copy with the given fields replaced; None values are ignored."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = "CVSERVE_"
    ) -> Settings:
        """Settings from CVSERVE_* variables (lists comma-separated). Called by the CLI only."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(prefix + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw, f.type)
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, raw: str, type_name: object) -> object:
    t = str(type_name)
    if "tuple" in t:
        return tuple(s.strip() for s in raw.split(",") if s.strip())
    if "Path" in t:
        return Path(raw)
    if t == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if t == "int":
        return int(raw)
    if t == "float":
        return float(raw)
    return raw
