"""The OpenAPI document and the docs page against a real server with API keys: the document passes
a real validator, names every route the server's Router has and no other, describes what the
routes really answer, and the docs page loads its Swagger UI files from the server itself; both
stay public while the API needs a key."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
import swagger_ui_bundle
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from onnx_builders import write_task_models
from rest_client import call, png
from servers import ROOT, serving

KEY = "test-inference-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo")
    write_task_models(path)
    return path


@pytest.fixture(scope="module")
def server(repo):
    yield from serving(repo, env={"ONNXSERVE_API_KEYS": json.dumps([KEY])})


@pytest.fixture(scope="module")
def document(server):
    status, headers, body = call(server, "GET", "/openapi.json")  # public: no key
    assert (status, headers["content-type"]) == (200, "application/json")
    return json.loads(body)


def test_the_document_passes_the_openapi_validator(document):
    validate(document)  # raises on any violation of the OpenAPI 3.0 schema and its rules
    assert document["openapi"] == "3.0.3"


ROUTES = """
import asyncio, json, sys
from service.app import InferenceServer
from service.settings import ServerSettings

async def main():
    server = InferenceServer(ServerSettings(models=sys.argv[1], http_port=0))
    print(json.dumps(sorted([r.method, r.template] for r in server.http_app.router.routes())))

asyncio.run(main())
"""


def test_every_route_of_the_router_is_documented_and_nothing_else(document, tmp_path):
    # The router as the composition root builds it, in a process of its own (service.app imports
    # our `inference` protobuf package, which cannot share a process with tritonclient's).
    result = subprocess.run([sys.executable, "-c", ROUTES, str(tmp_path)], cwd=ROOT, check=True,
                            capture_output=True, text=True, timeout=120)
    routes = {tuple(route) for route in json.loads(result.stdout)}
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    assert routes == documented
    assert len(routes) == 17 + 10 + 8 + 3 + 2  # V2, shared memory, task API, docs, demo page


def resolved(schema, document):
    """`schema` with every $ref replaced by what it names (the document has no cycles)."""
    if isinstance(schema, list):
        return [resolved(s, document) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = document
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return resolved(target, document)
    return {key: resolved(value, document) for key, value in schema.items()}


IMAGE = png(np.full((8, 8), 90, np.uint8))
JSON_IMAGES = {"images": [{"png": base64.b64encode(IMAGE).decode()}]}
CALLS = [  # (method, route, path, body); every answer is JSON
    ("GET", "/v2/health/live", "/v2/health/live", None),
    ("GET", "/v2/health/ready", "/v2/health/ready", None),
    ("GET", "/v2", "/v2", None),
    ("GET", "/v2/models/{model}", "/v2/models/brightness", None),
    ("GET", "/v2/models/{model}/versions/{version}/ready", "/v2/models/brightness/versions/1/ready",
     None),
    ("POST", "/v2/models/{model}/infer", "/v2/models/enc/infer", {"inputs": [
        {"name": "images", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]}),
    ("GET", "/v2/models/{model}/stats", "/v2/models/enc/stats", None),
    ("GET", "/v2/models/{model}/config", "/v2/models/enc/config", None),
    ("POST", "/v2/repository/index", "/v2/repository/index", {}),
    ("GET", "/v2/systemsharedmemory/status", "/v2/systemsharedmemory/status", None),
    ("GET", "/v2/cudasharedmemory/status", "/v2/cudasharedmemory/status", None),
    ("GET", "/v1/models", "/v1/models", None),
    ("GET", "/v1/models/{model}", "/v1/models/sr", None),
    ("POST", "/v1/models/{model}/classify", "/v1/models/brightness/classify?top_k=2",
     JSON_IMAGES),
    ("POST", "/v1/models/{model}/generate", "/v1/models/cgen/generate",
     {"count": 2, "class_label": 1}),
    ("POST", "/v1/models/{model}/encode", "/v1/models/enc/encode", JSON_IMAGES),
    ("POST", "/v1/models/{model}/decode", "/v1/models/dec/decode", {"latents": [[0, 1, 2, 3]]}),
    ("POST", "/v1/models/{model}/reconstruct", "/v1/models/ae/reconstruct", JSON_IMAGES),
    ("POST", "/v1/models/{model}/superresolve", "/v1/models/sr/superresolve",
     {"image": {"png": base64.b64encode(IMAGE).decode()}}),
]


@pytest.mark.parametrize("method, route, path, body", CALLS, ids=[c[2] for c in CALLS])
def test_answers_match_their_documented_schemas(server, document, method, route, path, body):
    status, headers, answer = call(server, method, path, body,
                                   {**AUTH, "Accept": "application/json"})
    assert (status, headers["content-type"]) == (200, "application/json"), answer
    documented = document["paths"][route][method.lower()]["responses"]["200"]
    OAS30Validator(resolved(documented["content"]["application/json"]["schema"],
                            document)).validate(json.loads(answer))


def test_errors_match_the_documented_error_schema(server, document):
    status, headers, answer = call(server, "POST", "/v1/models/brightness/classify?top_k=9",
                                   IMAGE, {**AUTH, "Content-Type": "image/png"})
    documented = document["paths"]["/v1/models/{model}/classify"]["post"]["responses"]
    assert status == 400 and "400" in documented
    OAS30Validator(resolved(documented["400"], document)["content"]["application/json"][
        "schema"]).validate(json.loads(answer))


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.urls.append(attributes[name])


def test_the_docs_page_loads_its_swagger_ui_files_from_the_server(server):
    status, headers, page = call(server, "GET", "/docs")  # public: no key
    assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
    parser = _Assets()
    parser.feed(page.decode())
    page_url = f"{server.http_url}/docs"
    assert len(parser.urls) == 4
    folder = Path(swagger_ui_bundle.swagger_ui_path)
    types = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".png": "image/png"}
    for url in parser.urls:
        absolute = urlsplit(urljoin(page_url, url))
        assert absolute.netloc == f"127.0.0.1:{server.http_port}"  # nothing from elsewhere
        status, headers, content = call(server, "GET", absolute.path)
        name = absolute.path.rsplit("/", 1)[1]
        assert (status, headers["content-type"]) == (200, types[Path(name).suffix]), url
        assert content == (folder / name).read_bytes()
    # The page points Swagger UI at the document, relative to itself.
    assert b'url: "openapi.json"' in page
    assert urlsplit(urljoin(page_url, "openapi.json")).path == "/openapi.json"
    status, _, body = call(server, "GET", "/docs/static/../../app.py")
    assert status == 404


def test_the_api_needs_a_key_while_the_docs_do_not(server):
    status, headers, body = call(server, "GET", "/v1/models")
    assert (status, json.loads(body)) == (401, {
        "error": "missing API key: send header 'Authorization: Bearer <key>'"})
    assert headers["www-authenticate"] == "Bearer"
    assert call(server, "GET", "/v1/models", headers=AUTH)[0] == 200
    for path in ("/openapi.json", "/docs", "/docs/static/swagger-ui.css", "/", "/demo/demo.js"):
        assert call(server, "GET", path)[0] == 200, path
