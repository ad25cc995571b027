"""Video streams in the SDK: start one, follow its events, grab a frame, stop it.

    with cvserve.Client(url, api_key=KEY) as client:
        stream = client.streams.start("rtsp://cam.local/1", "coco/1", tracker="bytetrack",
                                      lines=[{"name": "door", "start": [0, 400], "end": [640, 400]}])
        for event in stream.events():          # frame and status events, live
            if event.event == "frame":
                print(event.id, [p.get("tracker_id") for p in event.data["predictions"]])
        stream.stop()

`events()` picks up where it left off (Last-Event-ID) when the connection drops, and ends
after the stream's final status.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from cvserve.client.transport import _http_error
from cvserve.wire.sse import SSEEvent, parse

FINAL = ("completed", "failed", "stopped")


class Client(Protocol):
    """What streams use of `cvserve.Client` (its request path and its httpx pool)."""

    _http: Any

    def _request(self, method: str, path: str, **kwargs: Any) -> Any: ...


class Stream:
    """A stream on the server (`info` is its object as last fetched)."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self.client = client
        self.info = info
        self.id = str(info["id"])

    def __repr__(self) -> str:
        return f"<cvserve.client.Stream {self.id} {self.status}>"

    @property
    def status(self) -> str:
        return str(self.info.get("status"))

    def refresh(self) -> dict[str, Any]:
        self.info = self.client._request("GET", f"/streams/{self.id}")
        return self.info

    def stop(self) -> dict[str, Any]:
        """Stop it (any state); its final object."""
        self.info = self.client._request("DELETE", f"/streams/{self.id}")
        return self.info

    def frame_jpeg(self) -> bytes:
        """The newest annotated frame, as JPEG bytes."""
        return bytes(self.client._request("GET", f"/streams/{self.id}/frame.jpg"))

    def events(self, from_frame: int | None = None, reconnects: int = 5) -> Iterator[SSEEvent]:
        """Its events (`event`: "frame" or "status", `id`: the frame index, `data`), from
        frame `from_frame` when given (else live), until its final status."""
        import httpx

        http = self.client._http
        last: str | None = None
        tries = 0
        while True:
            params = {"from": str(from_frame)} if from_frame is not None and last is None else {}
            headers = {"Last-Event-ID": last} if last is not None else {}
            try:
                with http.stream(
                    "GET",
                    f"/streams/{self.id}/events",
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(60.0, read=None),
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise _http_error(resp)
                    for event in parse(resp.iter_lines()):
                        tries = 0
                        if event.id is not None:
                            last = event.id
                        yield event
                        if event.event == "status" and event.data.get("status") in FINAL:
                            self.info.update(event.data)
                            return
            except httpx.TransportError:
                tries += 1
                if tries > reconnects:
                    raise
                continue
            return  # the server ended the response: the stream has ended


class Streams:
    """`client.streams`: the server's video streams."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def start(
        self,
        source: str,
        model_id: str,
        *,
        params: dict[str, Any] | None = None,
        tracker: str | None = None,
        realtime: bool = False,
        max_fps: float | None = None,
        lines: Sequence[dict[str, Any]] = (),
        zones: Sequence[dict[str, Any]] = (),
    ) -> Stream:
        """Start running `model_id` over `source` (rtsp://, http(s)://, file:// inside the
        server's stream dirs, /dev/videoN). `params`: the hosted route's (confidence, ...)."""
        body: dict[str, Any] = {
            "source": source,
            "model_id": model_id,
            "params": dict(params or {}),
            "tracker": tracker,
            "realtime": realtime,
            "max_fps": max_fps,
            "lines": list(lines),
            "zones": list(zones),
        }
        return Stream(self.client, self.client._request("POST", "/streams", json=body))

    def get(self, stream_id: str) -> Stream:
        return Stream(self.client, self.client._request("GET", f"/streams/{stream_id}"))

    def list(self) -> list[Stream]:
        items = self.client._request("GET", "/streams").get("items", [])
        return [Stream(self.client, item) for item in items]
