"""The server as Python's own HTTP client sees it: `http.client` writes a whole request body
before it reads the reply (requests and httpx behave the same), so a refused body must still be
read by the server, or the client sees a reset connection instead of the problem (spec §14)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest


@pytest.mark.parametrize(
    "path, status, slug",
    [("/echo", 413, "body-too-large"), ("/no-such-object", 404, "unknown-object")],
)
def test_a_refused_4_mib_body_gets_its_problem(url: str, path: str, status: int, slug: str) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        body = b" " * (4 * 1024 * 1024)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        assert res.status == status
        assert res.getheader("Content-Type") == "application/problem+json"
        problem = json.loads(res.read())
        assert problem["type"] == f"urn:longrun:problem:{slug}"
        # The body was read to its end, so the connection carries the next request.
        conn.request("POST", "/echo", body=b'{"a": 1}', headers={"Content-Type": "application/json"})
        again = conn.getresponse()
        assert again.status == 201
        again.read()
    finally:
        conn.close()
