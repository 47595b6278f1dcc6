"""What the REST tests share: one request on a fresh connection through a real HTTP client."""

from __future__ import annotations

import http.client
import io
import json

import numpy as np
from PIL import Image


def call(server, method: str, path: str, body: bytes | dict | None = None,
         headers: dict | None = None, timeout: float = 120) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body); a dict body goes as JSON."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def error_of(result) -> tuple[int, str]:
    """(status, message) of an error answer, which is always JSON."""
    status, headers, body = result
    assert headers["content-type"] == "application/json", headers
    return status, json.loads(body)["error"]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
