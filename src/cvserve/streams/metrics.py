"""Streams on /metrics: how many in each status, and their frame counters, by model.

Labels are the model id and the status only: a source (which may carry credentials, and
is unbounded) never becomes a label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cvserve.streams.api import StreamsAPI

STATUSES = ("starting", "running", "reconnecting", "completed", "failed", "stopped")


class StreamsCollector(Collector):
    def __init__(self, streams: StreamsAPI) -> None:
        self.streams = streams

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        held = self.streams.held()
        by_status = Counter(obj["status"] for obj in held)
        streams = GaugeMetricFamily(
            "cvserve_streams", "Video streams this server holds, by status", labels=["status"]
        )
        for status in STATUSES:
            streams.add_metric([status], by_status.get(status, 0))
        yield streams
        frames = CounterMetricFamily(
            "cvserve_stream_frames",
            "Frames of the streams held, by model and fate (read, inferred, dropped)",
            labels=["model", "fate"],
        )
        totals: Counter[tuple[str, str]] = Counter()
        for obj in held:
            for fate in ("read", "inferred", "dropped"):
                totals[(obj["model_id"], fate)] += obj["stats"][f"frames_{fate}"]
        for (model, fate), value in sorted(totals.items()):
            frames.add_metric([model, fate], value)
        yield frames
