"""The hosted API's curl and Go snippets against a live `cvserve serve`.

The docs' curl snippet is `base64 YOUR_IMAGE.jpg | curl -d @- "https://.../proj/1?api_key=.."`:
GNU base64 wraps at 76 columns, `curl -d @-` strips the line breaks and sends
`Content-Type: application/x-www-form-urlencoded`. The Go snippet posts the base64 text
with no Content-Type at all (here: a raw `http.client` request). Real curl is spawned
when installed; every answer must equal the hosted route's.
"""

from __future__ import annotations

import base64
import http.client
import json
import shlex
import shutil
import subprocess
from typing import Any

import pytest

from tests.support.engines import ENGINES, clients_server
from tests.support.official_clients import strip_volatile

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=ENGINES)  # the local engine, then Ray's
def server(request):
    return clients_server(request, request.param)


@pytest.fixture(scope="module")
def shell():
    if shutil.which("curl") is None or shutil.which("base64") is None:
        pytest.skip("curl or base64 is not installed")

    def run(cmd: str) -> bytes:
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        return proc.stdout

    return run


def hosted(server, model_id: str, **params: Any) -> dict[str, Any]:
    return strip_volatile(server.hosted(model_id, server.images["jpg"], **params))


def url(server, model_id: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"api_key": server.api_key, **params}.items())
    return shlex.quote(f"{server.url}/{model_id}?{query}")


@pytest.mark.parametrize("model_id", ["det/1", "seg/1", "pose/1", "cls/1", "mcls/1", "sem/1"])
def test_docs_curl_snippet(server, shell, model_id):
    img = shlex.quote(str(server.images["jpg"]))
    out = shell(f"base64 {img} | curl -sS --fail-with-body -d @- {url(server, model_id)}")
    assert strip_volatile(json.loads(out)) == hosted(server, model_id)


def test_curl_body_variants(server, shell):
    img = shlex.quote(str(server.images["jpg"]))
    want = hosted(server, "det/1", confidence=30)
    u = url(server, "det/1", confidence=30)
    variants = [
        # line breaks kept (--data-binary keeps them; the server ignores whitespace)
        f"base64 {img} | curl -sS --fail-with-body --data-binary @- {u}",
        # one line, text/plain
        f"base64 -w0 {img} | curl -sS --fail-with-body -H 'Content-Type: text/plain' --data-binary @- {u}",
        # a data: URI prefix
        f"(printf 'data:image/jpeg;base64,'; base64 -w0 {img}) | curl -sS --fail-with-body -d @- {u}",
        # multipart part "file", as the official package sends segmentation images
        f"curl -sS --fail-with-body -F file=@{img} {u}",
        # the raw JPEG bytes
        f"curl -sS --fail-with-body -H 'Content-Type: image/jpeg' --data-binary @{img} {u}",
    ]
    for cmd in variants:
        assert strip_volatile(json.loads(shell(cmd))) == want, cmd


def test_curl_format_image(server, shell, tmp_path):
    img = shlex.quote(str(server.images["jpg"]))
    out = tmp_path / "out.jpg"
    ctype = shell(
        f"base64 {img} | curl -sS --fail-with-body -d @- -o {shlex.quote(str(out))} "
        f"-w '%{{content_type}}' {url(server, 'det/1', format='image', stroke=3)}"
    )
    assert ctype.decode().startswith("image/jpeg")
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"


def test_curl_no_key_is_401_wrong_key_is_403(server, shell):
    img = shlex.quote(str(server.images["jpg"]))
    for query, want in (("", b"401"), ("?api_key=wrong", b"403")):
        out = shell(
            f"base64 {img} | curl -sS -d @- -w '\\n%{{http_code}}' "
            f"{shlex.quote(server.url + '/det/1' + query)}"
        )
        body, code = out.rsplit(b"\n", 1)
        assert code == want, query
        assert json.loads(body) == {"Message": "User is not authorized to access this resource"}


def test_go_snippet_no_content_type(server):
    """Go: http.NewRequest("POST", url, strings.NewReader(base64)) sets no Content-Type."""
    data = base64.b64encode(server.images["jpg"].read_bytes())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", f"/det/1?api_key={server.api_key}&confidence=30")
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()  # exactly Host, Accept-Encoding and Content-Length: no Content-Type
        conn.send(data)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body
    assert resp.getheader("Content-Type", "").startswith("application/json")
    assert strip_volatile(json.loads(body)) == hosted(server, "det/1", confidence=30)
