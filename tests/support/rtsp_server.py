"""A real RTSP server for the streams tests: gst-rtsp-server (PyGObject), one H.264 file.

Run with the system python3 (Debian's python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-rtsp): `/usr/bin/python3 tests/support/rtsp_server.py PORT FILE.mp4`. It serves the
file at rtsp://127.0.0.1:PORT/clip, each client from the start at its native rate, and
prints "ready" once it listens. Not a test module (no test_ prefix).
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, path = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{path}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )'
    )
    factory.set_shared(False)  # each client its own pipeline, from the first frame
    server.get_mount_points().add_factory("/clip", factory)
    if server.attach(None) == 0:
        print("cannot listen", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
