"""What the native image decoders print, into the server's log instead of raw stderr.

For a corrupt image the C libraries behind the decoders print straight to the C `stderr`
stream: OpenCV's libpng ("libpng error: IDAT: incorrect data check", "libpng warning:
iCCP: known incorrect sRGB profile"), its libjpeg ("Corrupt JPEG data: 3 extraneous bytes
before marker 0xd9"), Pillow's libtiff ("TIFFFillStrip: Read error on strip 0"). No API
of theirs turns that off, so `capture()` (called by `cvserve serve` at start, never by the
SDK: it changes process-wide state) does it at the stream:

- C's `stderr` stream is pointed at a pipe (non-blocking: a full pipe drops a message, it
  never blocks a decoder), read by one daemon thread.
- Each decode (`decoding()`, in `cvserve.images`) registers itself while it runs and, when
  the decoder printed, waits (bounded) for the reader to take its lines; the reader logs
  ONE warning per decode on the `cvserve.images` logger, inside the decoding request's
  context, so the line carries its request id. With several decodes in flight at once the
  owner is unknown: each line is logged naming the candidate requests' ids instead.
- A line that arrives while nothing decodes goes to fd 2 unchanged.

Python's own stderr (sys.stderr, logging, tracebacks, faulthandler) writes fd 2 itself and
is not affected; neither is C++'s std::cerr. OpenCV's own logger ("[ WARN:0@1.2] global
grfmt_png.cpp ...") is set to fatal-only by `quiet_opencv()`, also at server start.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import logging
import os
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger("cvserve.images")
_warnings_log = logging.getLogger("py.warnings")
_WAIT_S = 0.05  # how long a decode that printed waits for the reader to take its lines


@dataclass(eq=False)
class _Decode:
    context: contextvars.Context
    request_id: str
    logged: bool = False


class _Capture:
    def __init__(self, read_fd: int, request_id: Callable[[], str]) -> None:
        self.read_fd = read_fd
        self.request_id = request_id
        self.active: set[_Decode] = set()
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.busy = False  # the reader holds bytes it has not handled yet
        self.partial = b""

    # -- the decoding threads ---------------------------------------------------------------
    def pending(self) -> int:
        import fcntl  # POSIX only, like the capture: the SDK imports this module anywhere
        import termios

        buf = fcntl.ioctl(self.read_fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])

    @contextlib.contextmanager
    def decoding(self) -> Iterator[None]:
        entry = _Decode(contextvars.copy_context(), self.request_id())
        with self.lock:
            self.active.add(entry)
        try:
            yield
        finally:
            if self.pending() or self.busy or self.partial:  # it (or another) printed
                deadline = time.monotonic() + _WAIT_S
                with self.lock:
                    while (self.pending() or self.busy) and time.monotonic() < deadline:
                        self.idle.wait(0.01)
            with self.lock:
                self.active.discard(entry)

    # -- the reader thread ------------------------------------------------------------------
    def run(self) -> None:
        import select

        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        while True:
            # Busy before the bytes leave the pipe: a decode that sees neither pending bytes
            # nor a busy reader knows its lines (if any) were handled.
            poller.poll()
            with self.lock:
                self.busy = True
            try:
                chunk = os.read(self.read_fd, 65536)
                if not chunk:
                    return
                self._handle(chunk)
            except OSError:
                return
            except Exception:  # never let the reader die: the decoders' lines would be lost
                pass
            finally:
                with self.lock:
                    self.busy = False
                    self.idle.notify_all()

    def _handle(self, chunk: bytes) -> None:
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        if len(self.partial) > 8192:  # no newline coming: hand it on as it is
            lines.append(self.partial)
            self.partial = b""
        for raw in lines:
            with self.lock:
                active = list(self.active)
            if not active:
                with contextlib.suppress(OSError):
                    os.write(2, raw + b"\n")  # not a decoder's: as it was
                continue
            text = raw.decode("utf-8", "replace").rstrip("\r")
            if not text.strip():
                continue
            if len(active) == 1:
                entry = active[0]
                if not entry.logged:  # one warning per decode
                    entry.logged = True
                    entry.context.run(log.warning, "image decoder reported corrupt data: %s", text)
            else:  # whose is unknown: name the candidates
                ids = ", ".join(sorted(e.request_id for e in active))
                log.warning(
                    "image decoder reported corrupt data (one of the concurrent decodes for "
                    "requests %s): %s",
                    ids,
                    text,
                )


_capture: _Capture | None = None
_install_lock = threading.Lock()


def capture(request_id: Callable[[], str] = lambda: "-") -> bool:
    """Send the C `stderr` stream of this process through the log (see the module doc);
    `request_id` names the request a decode serves (to name the candidates when several
    run at once). Idempotent; False where it cannot be done, leaving stderr as it was."""
    global _capture
    with _install_lock:
        if _capture is not None:
            return True
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(None)
            stderr_var = ctypes.c_void_p.in_dll(libc, "stderr")
            libc.fdopen.restype = ctypes.c_void_p
            libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
            libc.setvbuf.argtypes = [
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_size_t,
            ]
        except (OSError, ValueError, AttributeError):
            return False
        read_fd, write_fd = os.pipe()  # both close on exec: children keep the real fd 2
        os.set_blocking(write_fd, False)
        stream = libc.fdopen(write_fd, b"w")
        if not stream:
            os.close(read_fd)
            os.close(write_fd)
            return False
        libc.setvbuf(stream, None, 2, 0)  # _IONBF: each write reaches the pipe at once
        _capture = _Capture(read_fd, request_id)
        threading.Thread(target=_capture.run, name="cvserve-native-stderr", daemon=True).start()
        stderr_var.value = stream
        return True


def decoding() -> contextlib.AbstractContextManager[None]:
    """Around a native decode: what it prints is logged once, with the request id."""
    if _capture is None:
        return contextlib.nullcontext()  # the SDK, tests: nothing installed, nothing done
    return _capture.decoding()


def quiet_decoders(request_id: Callable[[], str] = lambda: "-") -> bool:
    """All of it, for the server at start: OpenCV's logger fatal-only, the C decoders'
    lines captured, Python warnings (Pillow's "Corrupt EXIF data") through logging.
    Returns whether the C stream could be captured."""
    quiet_opencv()
    warnings.showwarning = _log_warning
    return capture(request_id)


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Python warnings as one log line each (logging.captureWarnings would add the source
    line and a blank one): "UserWarning: Corrupt EXIF data ... (PIL/TiffImagePlugin.py:982)"."""
    where = "/".join(filename.replace("\\", "/").split("/")[-2:])
    _warnings_log.warning("%s: %s (%s:%d)", category.__name__, message, where, lineno)


def quiet_opencv() -> None:
    """OpenCV's own log lines ("[ WARN:0@...] global grfmt_png.cpp ... PNG input buffer is
    incomplete", "[ERROR:0@...] imdecode_ ... can't read data") only for fatal errors: a
    failed decode already answers the request with a 400 naming the problem."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_FATAL)
