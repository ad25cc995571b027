"""Line crossings and zone occupancy per class, on supervision's LineZone and PolygonZone.

A line counts tracked objects whose anchor point (bottom centre of the box by default)
moves from one side to the other: `in` is a crossing from the right of start->end to its
left (in image coordinates, y down), `out` the reverse; each track counts once per
crossing. A zone counts the detections whose bottom centre lies inside its polygon, now.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from cvserve.streams.spec import LineSpec, ZoneSpec


class Counting:
    def __init__(self, lines: list[LineSpec], zones: list[ZoneSpec]) -> None:
        import supervision as sv

        anchors = {"bottom_center": sv.Position.BOTTOM_CENTER, "center": sv.Position.CENTER}
        self._lines = {
            line.name: sv.LineZone(
                start=sv.Point(*line.start),
                end=sv.Point(*line.end),
                triggering_anchors=(anchors[line.anchor],),
            )
            for line in lines
        }
        self._zones = {
            zone.name: sv.PolygonZone(
                polygon=np.round(np.asarray(zone.polygon, np.float64)).astype(np.int64)
            )
            for zone in zones
        }
        self._in: dict[str, Counter[str]] = {name: Counter() for name in self._lines}
        self._out: dict[str, Counter[str]] = {name: Counter() for name in self._lines}
        self._present: dict[str, dict[str, int]] = {name: {} for name in self._zones}

    def __bool__(self) -> bool:
        return bool(self._lines or self._zones)

    def update(self, detections: Any, tracked: bool) -> None:
        """One frame's sv.Detections (with tracker_id when `tracked`, which lines need)."""
        names = detections.data.get("class_name", np.zeros(0, object))
        if tracked:
            for name, line in self._lines.items():
                crossed_in, crossed_out = line.trigger(detections)
                self._in[name].update(str(n) for n in names[np.asarray(crossed_in, bool)])
                self._out[name].update(str(n) for n in names[np.asarray(crossed_out, bool)])
        for name, zone in self._zones.items():
            inside = np.asarray(zone.trigger(detections) if len(detections) else [], bool)
            self._present[name] = dict(Counter(str(n) for n in names[inside]))

    def counts(self) -> dict[str, Any]:
        return {
            "lines": {
                name: {"in": dict(self._in[name]), "out": dict(self._out[name])}
                for name in self._lines
            },
            "zones": {name: dict(present) for name, present in self._present.items()},
        }
