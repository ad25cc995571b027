"""Error types shared by every layer; each carries the HTTP status it maps to.

Models, decoders and fetchers raise these; the HTTP layer renders them. Nothing here
knows about HTTP beyond the status number.
"""

from __future__ import annotations


class CVServeError(Exception):
    """Base error. `status` is the HTTP status the server answers with."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(CVServeError):
    status = 400


class Unauthorized(CVServeError):
    """A wrong key (403); `MissingKey` is its 401 sibling, the hosted platform's split."""

    status = 403


class MissingKey(Unauthorized):
    status = 401


class ModelNotFound(CVServeError):
    status = 404


class PayloadTooLarge(CVServeError):
    status = 413


class UnsupportedMediaType(CVServeError):
    status = 415


class TooManyRequests(CVServeError):
    status = 429


class Overloaded(CVServeError):
    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(CVServeError):
    status = 504


class ModelLoadError(CVServeError):
    """A model in the store could not be loaded (bad file, unknown layout)."""

    status = 500
