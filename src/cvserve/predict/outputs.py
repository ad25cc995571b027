"""Where predictions go: one JSON file per image, JSON lines, or JSON lines plus COCO.

Each output knows which images it already holds, so a re-run resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cvserve.predict.backends import Backend
from cvserve.predict.coco import to_coco
from cvserve.predict.options import COCO_NAME, IMAGE_EXTENSIONS, JSONL_NAME


class Output:
    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        raise NotImplementedError

    def write(self, name: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self, backend: Backend) -> list[Path]:
        return []


def _dumps(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj)


class JsonFiles(Output):
    def _path(self, name: str) -> Path:
        return self.out / (name + ".json")

    def done(self) -> set[str]:
        found = set()
        for path in self.out.rglob("*.json"):
            rel = path.relative_to(self.out).as_posix()[: -len(".json")]
            if Path(rel).suffix.lower() in IMAGE_EXTENSIONS:
                found.add(rel)
        return found

    def write(self, name: str, body: dict[str, Any]) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(_dumps(body))
        os.replace(tmp, path)  # a file that exists is complete

    def finish(self, backend: Backend) -> list[Path]:
        return [self.out]


def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete line of a predictions.jsonl; with `repair`, cut a torn last line off."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, good_end, pos = [], 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: the writer died mid-line
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            good_end = pos
            continue
        try:
            row = json.loads(line)
        except ValueError:
            break
        if isinstance(row, dict) and "file" in row:
            rows.append(row)
        good_end = pos
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows


class JsonLines(Output):
    def __init__(self, out: Path) -> None:
        super().__init__(out)
        self.path = out / JSONL_NAME
        self.rows = read_jsonl(self.path, repair=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in finish()

    def done(self) -> set[str]:
        return {str(r["file"]) for r in self.rows}

    def write(self, name: str, body: dict[str, Any]) -> None:
        self._fh.write(_dumps({"file": name, **body}) + b"\n")
        self._fh.flush()

    def finish(self, backend: Backend) -> list[Path]:
        self._fh.close()
        return [self.path]


class CocoOutput(JsonLines):
    def finish(self, backend: Backend) -> list[Path]:
        super().finish(backend)
        rows = read_jsonl(self.path)
        coco = to_coco(rows, backend.class_names)
        dest = self.out / COCO_NAME
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(_dumps(coco))
        os.replace(tmp, dest)
        return [self.path, dest]
