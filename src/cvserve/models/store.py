"""The model store on disk: `<root>/<dataset>/<version>/cvserve.json` plus ONNX files.

Listing reads manifests only. Loading builds sessions once per model, off the event
loop, under a per-model lock, so loading one model never blocks requests to another. Each
load is timed and its resident growth measured (`stats`), and recorded in the model's folder
(`.load.json`: what `cvserve models list` shows as "last load"); which models stay loaded
under a budget is the engine's business (cvserve.engine.residency).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cvserve.errors import BadRequest, ModelLoadError, ModelNotFound
from cvserve.models import registry
from cvserve.models.base import Model, ModelInfo
from cvserve.models.ids import parse_model_id
from cvserve.models.manifest import MANIFEST_NAME, Manifest
from cvserve.models.memory import release_free_memory, resident_bytes
from cvserve.models.runtime import RuntimeOptions, SessionPool

log = logging.getLogger("cvserve.models")

LOAD_RECORD = ".load.json"  # in the model's folder: its latest load by any process


@dataclass(frozen=True)
class LoadStats:
    """A model's latest load: how long it took and how much the process grew across it."""

    seconds: float
    resident_bytes: int
    loads: int  # loads of this model since the store was opened


@dataclass(frozen=True)
class LoadRecord:
    """A model's latest load as its folder records it (`LOAD_RECORD`), whichever process
    loaded it: seconds, resident growth, the runtimes its sessions run on, when (UTC)."""

    seconds: float
    resident_bytes: int
    runtimes: tuple[str, ...]  # "onnxruntime f32", "openvino bf16", ... one per kind
    loaded_at: str  # ISO 8601, UTC

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 4),
            "resident_bytes": self.resident_bytes,
            "runtimes": list(self.runtimes),
            "loaded_at": self.loaded_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LoadRecord | None:
        try:
            runtimes = data.get("runtimes") or []
            return cls(
                float(data["seconds"]),
                int(data["resident_bytes"]),
                tuple(str(r) for r in runtimes),
                str(data["loaded_at"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        """`3.31 s, +209 MB (2026-12-02)`; a runtime other than ONNX Runtime f32 is named."""
        text = f"{self.seconds:.2f} s, +{self.resident_bytes / 1e6:.0f} MB ({self.loaded_at[:10]})"
        if self.runtimes and self.runtimes != ("onnxruntime f32",):
            text += ", " + " / ".join(self.runtimes)
        return text


def runtimes_of(model: Model) -> tuple[str, ...]:
    """The runtimes and precisions of a model's sessions (and its parts'), each kind once,
    in the order found: a SAM model on bf16 runs "openvino bf16 / openvino f32" (decoder)."""
    found: list[str] = []
    seen: set[int] = set()

    def walk(obj: object, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, SessionPool):
            choice = getattr(obj, "choice", None)
            if choice is not None and (kind := f"{choice.runtime} {choice.precision}") not in found:
                found.append(kind)
        elif isinstance(obj, Model):
            for value in list(getattr(obj, "__dict__", {}).values()):
                walk(value, depth + 1)

    walk(model, 0)
    return tuple(found)


def folder_mode() -> int:
    """The mode a new folder gets (os.mkdir's): 0o777 less the process's umask, read where
    Linux shows it (/proc/self/status) rather than set and reset (os.umask is process-wide,
    racing other threads' file creation)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o777 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


LoadListener = Callable[[str, LoadStats], None]
_loading = threading.local()  # the resident growth of the loads nested in this thread's load


class ModelStore:
    def __init__(self, root: Path, options: RuntimeOptions | None = None) -> None:
        self.root = root
        self.options = options or RuntimeOptions()
        self._models: dict[str, Model] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.stats: dict[str, LoadStats] = {}
        self.load_listeners: list[LoadListener] = []

    # -- on-disk -------------------------------------------------------------------------
    def folder(self, model_id: str) -> Path:
        dataset, version = parse_model_id(model_id)
        return self.root / dataset / version

    def exists(self, model_id: str) -> bool:
        try:
            return (self.folder(model_id) / MANIFEST_NAME).is_file()
        except BadRequest:
            return False

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST_NAME}")):
            found.append(f"{manifest.parent.parent.name}/{manifest.parent.name}")
        return found

    def manifest(self, model_id: str) -> Manifest:
        folder = self.folder(model_id)
        if not (folder / MANIFEST_NAME).is_file():
            raise ModelNotFound(f"model {model_id} is not in the store")
        return Manifest.read(folder)

    def infos(self) -> list[ModelInfo]:
        out = []
        for mid in self.ids():
            try:
                out.append(registry.info_from_manifest(mid, self.manifest(mid)))
            except ModelLoadError:
                continue  # a broken folder must not hide the others
        return out

    def install(self, model_id: str, staged: Path, *, replace: bool = False) -> Path:
        """Move a fully written folder into place atomically (a failed import leaves nothing)."""
        Manifest.read(staged)  # refuse half-written folders
        # A copied folder (an import, an int8 variant) never brings another load's record.
        (staged / LOAD_RECORD).unlink(missing_ok=True)
        dest = self.folder(model_id)
        if dest.exists() and not replace:
            raise BadRequest(f"model {model_id} already exists (remove it first)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # staging_dir()'s mkdtemp made it owner-only: an installed model is a plain folder.
        staged.chmod(folder_mode())
        tmp_old = None
        if dest.exists():
            suffix = secrets.token_hex(4)  # a fresh name, so a left-over .old- never collides
            tmp_old = dest.with_name(dest.name + ".old-" + suffix)
            dest.rename(tmp_old)
        shutil.move(str(staged), str(dest))
        if tmp_old is not None:
            shutil.rmtree(tmp_old, ignore_errors=True)
        self.unload(model_id)
        return dest

    def staging_dir(self) -> Path:
        """A scratch folder on the store's filesystem, so install() is a rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def remove(self, model_id: str) -> None:
        folder = self.folder(model_id)
        if not folder.exists():
            raise ModelNotFound(f"model {model_id} is not in the store")
        self.unload(model_id)
        shutil.rmtree(folder)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()

    # -- loaded models -------------------------------------------------------------------
    def loaded(self, model_id: str) -> Model | None:
        return self._models.get(model_id)

    def get(self, model_id: str) -> Model:
        """The loaded model, loading it first if needed (blocking: call from a thread)."""
        model = self._models.get(model_id)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(model_id, threading.Lock())
        with lock:
            model = self._models.get(model_id)
            if model is None:
                model = self._load(model_id)
        return model

    def _load(self, model_id: str) -> Model:
        manifest = self.manifest(model_id)
        release_free_memory()
        before, began = resident_bytes(), time.perf_counter()
        nested: list[int] | None = getattr(_loading, "nested", None)
        _loading.nested = [0]  # parts loaded during this load (a composite's) count as theirs
        try:
            model = registry.load(
                model_id, manifest, self.folder(model_id), self.options, parts=self.get
            )
        finally:
            parts, _loading.nested = _loading.nested[0], nested
        seconds = time.perf_counter() - began
        release_free_memory()  # what the load parsed and dropped is not the model's
        # Another thread's frees can make it < 0; the parts' growth is in their own stats.
        grown = max(0, resident_bytes() - before - parts)
        if nested is not None:  # a part: its parent's growth is less by this
            nested[0] += grown + parts
        previous = self.stats.get(model_id)
        stats = LoadStats(seconds, grown, (previous.loads if previous else 0) + 1)
        self.stats[model_id] = stats
        self._models[model_id] = model
        self._record_load(model_id, stats, model)
        for listener in list(self.load_listeners):
            with contextlib.suppress(Exception):  # metrics must never fail a load
                listener(model_id, stats)
        return model

    def _record_load(self, model_id: str, stats: LoadStats, model: Model) -> None:
        """Write the load's record into the model's folder, atomically (a temp file, then
        os.replace). Best effort: a read-only store or any OSError never fails the load."""
        record = LoadRecord(
            stats.seconds,
            stats.resident_bytes,
            runtimes_of(model),
            datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
        folder = self.folder(model_id)
        tmp = folder / f"{LOAD_RECORD}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(json.dumps(record.as_dict(), indent=2) + "\n")
            os.replace(tmp, folder / LOAD_RECORD)
        except OSError as e:
            log.debug("cannot record the load of %s in %s: %s", model_id, folder, e)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def last_load(self, model_id: str) -> LoadRecord | None:
        """The model's latest load recorded in its folder (by any process), or None."""
        try:
            data = json.loads((self.folder(model_id) / LOAD_RECORD).read_text())
        except (OSError, ValueError, BadRequest):
            return None
        return LoadRecord.from_dict(data)

    def loaded_ids(self) -> list[str]:
        return list(self._models)

    def file_bytes(self, model_id: str) -> int:
        """The model folder's size on disk (a first guess at its memory, before any load)."""
        try:
            return sum(f.stat().st_size for f in self.folder(model_id).rglob("*") if f.is_file())
        except (OSError, BadRequest):
            return 0

    def unload(self, model_id: str) -> bool:
        """Drop the model (its memory goes when its last running request lets go of it)."""
        model = self._models.pop(model_id, None)
        if model is None:
            return False
        model.close()
        del model
        release_free_memory()
        return True

    def close(self) -> None:
        for mid in list(self._models):
            self.unload(mid)
