"""HTTP for the SDK: one keep-alive httpx client, retries of 429/503/504 (honouring
Retry-After) and of refused connections, and the error type every failure raises."""

from __future__ import annotations

import time
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9001"
RETRY_STATUSES = (429, 503, 504)


class CVServeHTTPError(Exception):
    """The server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.body = body


class Transport:
    """One server's keep-alive connection pool (thread-safe) and the retry policy."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        retries: int = 3,
        headers: dict[str, str] | None = None,
        verify: bool = True,
        transport: Any = None,
    ) -> None:
        import httpx  # here, not at the top: `import cvserve.client` stays free of httpx

        self.url = url.rstrip("/")
        self.retries = max(0, int(retries))
        hdrs = {"User-Agent": _user_agent()}
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        hdrs.update(headers or {})
        self.http = httpx.Client(
            base_url=self.url,
            headers=hdrs,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_keepalive_connections=16, max_connections=32),
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON (or raw bytes) of a successful answer; CVServeHTTPError otherwise."""
        import httpx

        attempt = 0
        while True:
            try:
                r = self.http.request(method, path, **kwargs)
            except httpx.TimeoutException as e:
                raise CVServeHTTPError(0, f"request to {self.url}{path} timed out: {e}") from e
            except httpx.TransportError as e:
                if attempt < self.retries and isinstance(e, httpx.ConnectError):
                    attempt += 1
                    time.sleep(min(2.0, 0.2 * 2**attempt))
                    continue
                raise CVServeHTTPError(0, f"cannot reach {self.url}: {e}") from e
            if r.status_code in RETRY_STATUSES and attempt < self.retries:
                attempt += 1
                time.sleep(_retry_delay(r, attempt))
                continue
            if r.status_code >= 400:
                raise _http_error(r)
            if r.headers.get("content-type", "").startswith("application/json"):
                return r.json()
            return r.content

    def download(self, url: str) -> bytes:
        """An image from any http(s) URL, outside the server's pool (redirects followed)."""
        import httpx

        try:
            r = httpx.get(url, follow_redirects=True, timeout=self.http.timeout)
        except httpx.HTTPError as e:
            raise CVServeHTTPError(0, f"could not download {url}: {e}") from e
        if r.status_code >= 400:
            raise CVServeHTTPError(r.status_code, f"could not download {url}")
        return r.content


def _retry_delay(response: Any, attempt: int) -> float:
    raw = response.headers.get("retry-after")
    try:
        if raw is not None:
            return max(0.0, min(10.0, float(raw)))
    except ValueError:
        pass
    return min(5.0, 0.25 * 2**attempt)


def _http_error(response: Any) -> CVServeHTTPError:
    body: Any = None
    message = response.reason_phrase or "error"
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = text[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            message = str(err["message"])
        elif "message" in body:
            message = str(body["message"])
        elif "Message" in body:
            message = str(body["Message"])
    return CVServeHTTPError(response.status_code, message, body)


def _user_agent() -> str:
    from cvserve import __version__

    return f"cvserve-python/{__version__}"
