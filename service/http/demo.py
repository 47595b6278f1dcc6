"""The demo page at `/`: plain HTML, CSS and ES modules from service/http/static/, no build step.
The page is public, like /docs; what it does goes through the public task routes (/v1/...), which
need a key when the server has API keys, so the page has a field for one.
"""

from __future__ import annotations

from pathlib import Path

from service.errors import NotFound
from service.http.framework import Request, Response, Router

STATIC = Path(__file__).parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8"}
# The files change with the server, not with a package version: revalidate every time.
_HEADERS = [(b"cache-control", b"no-cache")]


class DemoRoutes:
    def __init__(self) -> None:
        # A handful of small files, read once; nothing outside the folder can ever be named.
        self._files = {path.name: (path.read_bytes(), _TYPES[path.suffix])
                       for path in STATIC.iterdir() if path.suffix in _TYPES}

    def register(self, router: Router) -> None:
        router.add("GET", "/", self.page, "Demo", public=True)
        router.add("GET", "/demo/{file}", self.static, "DemoStatic", public=True)

    async def page(self, request: Request) -> Response:
        return self._file("index.html")

    async def static(self, request: Request) -> Response:
        return self._file(request.params["file"])

    def _file(self, name: str) -> Response:
        found = self._files.get(name)
        if found is None:
            raise NotFound(f"no demo file '{name}'")
        body, content_type = found
        return Response(body=body, content_type=content_type, headers=_HEADERS,
                        compressible=True)
