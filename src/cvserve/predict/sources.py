"""Finding the images of a source: a file, a folder (recursive) or a glob."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from cvserve.predict.options import IMAGE_EXTENSIONS, PredictError


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def find_images(source: str, exclude: Path | None = None) -> list[tuple[Path, str]]:
    """(path, name relative to the source root) for every image, sorted by name.

    SOURCE is an image file, a folder (searched recursively, hidden entries skipped) or a
    glob pattern (`**` recurses); files under `exclude` (the output folder) are left out.
    """
    excluded = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    if glob.has_magic(source):
        parts = Path(source).parts
        root_parts = []
        for part in parts:
            if glob.has_magic(part):
                break
            root_parts.append(part)
        root = Path(*root_parts) if root_parts else Path(".")
        for name in glob.glob(source, recursive=True):
            path = Path(name)
            if _is_image(path) and not _inside(path, excluded):
                found.append((path, path.relative_to(root).as_posix()))
    else:
        src = Path(source).expanduser()
        if src.is_dir():
            for dirpath, dirnames, filenames in os.walk(src):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fname in filenames:
                    path = Path(dirpath) / fname
                    if fname.startswith(".") or not _is_image(path) or _inside(path, excluded):
                        continue
                    found.append((path, path.relative_to(src).as_posix()))
        elif src.is_file():
            found.append((src, src.name))
        else:
            raise PredictError(f"{source}: no such file or folder")
    found.sort(key=lambda t: t[1])
    return found
