"""Video streams with tracking (SPEC.md section 9): sources, a reader thread per source,
the engine per frame, trackers, line and zone counts, events. PyAV, trackers and
supervision (the `streams` extra) are imported only when a stream runs."""

from cvserve.streams.manager import StreamManager
from cvserve.streams.runner import StreamEngine

__all__ = ["StreamEngine", "StreamManager"]
