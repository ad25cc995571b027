"""ONNX Runtime sessions: the reference runtime (`cvserve.models.runtime.make_session`)."""

from __future__ import annotations

from pathlib import Path

from cvserve.models.backends.base import Session


def open_session(path: Path, threads: int, spin: bool = False) -> Session:
    from cvserve.models.runtime import make_session  # runtime imports this package

    session: Session = make_session(path, threads, spin)
    return session


def version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)
