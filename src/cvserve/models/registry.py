"""Family name (manifest `family`) -> loader. Each family module registers itself here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from cvserve.errors import ModelLoadError
from cvserve.models.base import Model
from cvserve.models.manifest import Manifest
from cvserve.models.runtime import RuntimeOptions

Loader = Callable[[str, Manifest, Path, RuntimeOptions], Model]

_FAMILIES: dict[str, Loader] = {}

# Modules that define families; imported on first use so start-up stays cheap.
_FAMILY_MODULES = (
    "cvserve.models.yolo",
    "cvserve.models.generic",
    "cvserve.models.ssd",
    "cvserve.models.retinaface",
    "cvserve.models.movenet",
    "cvserve.models.sam",
    "cvserve.models.composite",
)
_loaded = False


def family(name: str) -> Callable[[Loader], Loader]:
    def register(loader: Loader) -> Loader:
        _FAMILIES[name] = loader
        return loader

    return register


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency inside the module
                raise
    _loaded = True


def known_families() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)


def load(model_id: str, manifest: Manifest, folder: Path, options: RuntimeOptions) -> Model:
    _ensure_loaded()
    loader = _FAMILIES.get(manifest.family)
    if loader is None:
        raise ModelLoadError(
            f"model {model_id}: unknown family {manifest.family!r}; known: {', '.join(sorted(_FAMILIES))}"
        )
    return loader(model_id, manifest, folder, options)
