"""Optional API keys: stored as SHA-256 digests, compared in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.requests import Request

from cvserve.errors import MissingKey, Unauthorized
from cvserve.http.ratelimit import RateLimiter


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyChecker:
    def __init__(self, keys: Iterable[str], limiter: RateLimiter | None = None) -> None:
        self._digests = [_digest(k) for k in keys if k]
        self.limiter = limiter

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def valid(self, key: str | None) -> bool:
        if not self._digests:
            return True
        if not key:
            return False
        d = _digest(key)
        ok = False
        for known in self._digests:  # no early exit: timing must not reveal which key matched
            ok |= hmac.compare_digest(d, known)
        return ok

    @staticmethod
    def key_from(request: Request, body_key: object = None) -> str | None:
        """api_key query param, `Authorization: Bearer`, `api-key` header, or a JSON body field."""
        key = request.query_params.get("api_key")
        if key:
            return key
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        header = request.headers.get("api-key")
        if header:
            return header
        return body_key if isinstance(body_key, str) else None  # JSON may carry anything

    def check(self, request: Request, body_key: object = None) -> str | None:
        """The caller's key if it may proceed: 401 without a key, 403 for a wrong one (as the
        hosted platform answers), 429 over the rate limit."""
        key = self.key_from(request, body_key)
        if not self.valid(key):
            # A JSON key that is not a string (5, a list) was sent, so it is wrong, not missing.
            missing = not key and body_key in (None, "")
            error = MissingKey if missing else Unauthorized
            raise error("User is not authorized to access this resource")
        self.limit(request, key)
        return key

    def limit(self, request: Request, key: str | None) -> None:
        """Count one request against the caller's rate limit (per key, else per address)."""
        if self.limiter is not None:
            self.limiter.hit(key, request.client.host if request.client else None)
