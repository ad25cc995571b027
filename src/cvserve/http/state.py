"""Everything the routes share, built once per app from the settings (nothing global)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cvserve.http.auth import KeyChecker
from cvserve.models.store import ModelStore
from cvserve.settings import Settings

Hook = Callable[[], Awaitable[None]]


@dataclass
class AppState:
    settings: Settings
    store: ModelStore
    keys: KeyChecker
    # Pixel work and session.run happen here; numpy, OpenCV and ORT release the GIL.
    executor: ThreadPoolExecutor
    # Loading models runs on its own threads so a slow load never starves inference.
    loader: ThreadPoolExecutor
    startup: list[Hook] = field(default_factory=list)
    shutdown: list[Hook] = field(default_factory=list)
    extras: dict[str, object] = field(default_factory=dict)

    async def run(self, fn: Callable, *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
