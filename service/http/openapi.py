"""The OpenAPI document of every REST route, the Open Inference Protocol's and the task API's, at
`/openapi.json`, and an interactive docs page at `/docs` served from the swagger-ui-bundle
package's own files: a server often has no internet, so nothing comes from a CDN.

OpenAPI 3.0, not 3.1: the Swagger UI that swagger-ui-bundle ships (4.x) renders 3.0 only. Each
route of the Router has exactly one operation here (tests/http/test_openapi.py checks both ways).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import swagger_ui_bundle

from service.core.config import TaskKind
from service.core.datatypes import DATATYPES
from service.core.description import SERVER_NAME, SERVER_VERSION
from service.errors import NotFound
from service.http.framework import JSON, Request, Response, Router
from service.http.task_codec import MAX_SEED, MAX_TIMEOUT_MS
from service.http.v2_codec import HEADER_LENGTH

OCTETS = "application/octet-stream"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required: tuple[str, ...] = (), **extra) -> dict:
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _array(items: dict, **extra) -> dict:
    return {"type": "array", "items": items, **extra}


STRING, BOOLEAN, NUMBER = {"type": "string"}, {"type": "boolean"}, {"type": "number"}
INTEGER = {"type": "integer"}
BINARY = {"type": "string", "format": "binary"}
BASE64 = {"type": "string", "format": "byte"}
PARAMETERS = {"type": "object", "additionalProperties": True,
              "description": "Parameters: names to strings, numbers or booleans."}
COUNTED = _object({"count": INTEGER, "ns": INTEGER}, ("count", "ns"))

SHARED_MEMORY_PARAMETERS = {
    "shared_memory_region": {"type": "string", "description": "Shared-memory extension: the "
                             "tensor's bytes are in this registered region, not in the body."},
    "shared_memory_byte_size": INTEGER,
    "shared_memory_offset": {"type": "integer", "description": "Bytes into the region; 0 if "
                             "absent."},
}

SCHEMAS = {
    "EmptyObject": {"type": "object"},
    "Error": _object({"error": {"type": "string", "description": "What went wrong, naming the "
                                "field, what was expected and what came."}}, ("error",)),
    # -- Open Inference Protocol ------------------------------------------------------------
    "Datatype": {"type": "string", "enum": list(DATATYPES)},
    "TensorMetadata": _object({"name": STRING, "datatype": _ref("Datatype"),
                               "shape": _array(INTEGER, description="-1: any size")},
                              ("name", "datatype", "shape")),
    "ServerLive": _object({"live": BOOLEAN}, ("live",)),
    "ServerReady": _object({"ready": BOOLEAN}, ("ready",)),
    "ModelReady": _object({"name": STRING, "ready": BOOLEAN}, ("name", "ready")),
    "ServerMetadata": _object({"name": STRING, "version": STRING, "extensions": _array(STRING),
                               "parameters": PARAMETERS}, ("name", "version", "extensions")),
    "ModelMetadata": _object({
        "name": STRING, "versions": _array(STRING), "platform": STRING,
        "inputs": _array(_ref("TensorMetadata")), "outputs": _array(_ref("TensorMetadata")),
        "parameters": PARAMETERS}, ("name", "platform", "inputs", "outputs")),
    "RequestInput": _object({
        "name": STRING, "shape": _array(INTEGER), "datatype": _ref("Datatype"),
        "parameters": _object({"binary_data_size": {
            "type": "integer", "description": "Binary tensor extension: the input's bytes follow "
            "the JSON header, in input order."}, **SHARED_MEMORY_PARAMETERS},
            additionalProperties=True),
        "data": {"type": "array", "items": {},
                 "description": "The values, a flat or nested list in row-major order."}},
        ("name", "shape", "datatype")),
    "RequestOutput": _object({"name": STRING, "parameters": _object(
        {"binary_data": {"type": "boolean", "description": "Send this output as raw bytes after "
                         "the JSON header."},
         "classification": {"type": "integer", "minimum": 1, "description": "Classification "
                            "extension: the top N classes as BYTES 'score:index[:label]'."},
         **SHARED_MEMORY_PARAMETERS}, additionalProperties=True)}, ("name",)),
    "InferRequest": _object({
        "id": STRING,
        "parameters": _object({
            "timeout": {"type": "integer", "description": "Deadline in microseconds."},
            "binary_data_output": {"type": "boolean",
                                   "description": "Every output as raw bytes."}},
            additionalProperties=True),
        "inputs": _array(_ref("RequestInput")), "outputs": _array(_ref("RequestOutput"))},
        ("inputs",)),
    "ResponseOutput": _object({
        "name": STRING, "shape": _array(INTEGER), "datatype": _ref("Datatype"),
        "parameters": _object({"binary_data_size": INTEGER}, additionalProperties=True),
        "data": {"type": "array", "items": {}}}, ("name", "shape", "datatype")),
    "InferResponse": _object({"model_name": STRING, "model_version": STRING, "id": STRING,
                              "outputs": _array(_ref("ResponseOutput"))},
                             ("model_name", "outputs")),
    "ModelStatistics": _object({
        "name": STRING, "version": STRING, "last_inference": INTEGER,
        "inference_count": INTEGER, "execution_count": INTEGER,
        "inference_stats": _object({key: COUNTED for key in (
            "success", "fail", "queue", "compute_input", "compute_infer", "compute_output")}),
        "batch_stats": _array(_object({"batch_size": INTEGER, **{key: COUNTED for key in (
            "compute_input", "compute_infer", "compute_output")}}))}),
    "Statistics": _object({"model_stats": _array(_ref("ModelStatistics"))}, ("model_stats",)),
    "ModelConfig": {"type": "object", "additionalProperties": True,
                    "description": "Triton's ModelConfig message as JSON (model_config.proto)."},
    "RepositoryIndexRequest": _object({"ready": {
        "type": "boolean", "description": "Only the models that are ready."}}),
    "RepositoryIndexEntry": _object({"name": STRING, "version": STRING, "state": {
        "type": "string", "enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
        "reason": STRING}, ("name", "state")),
    "LoadRequest": _object({"parameters": _object({"config": {
        "type": "string", "description": "A config override: Triton's ModelConfig as JSON."}},
        additionalProperties={"type": "string", "format": "byte",
                              "description": "`file:<path>`: a model file's bytes, base64."})}),
    "UnloadRequest": _object({"parameters": _object({"unload_dependents": BOOLEAN})}),
    "SharedMemoryRegion": _object({"name": STRING, "key": STRING, "offset": INTEGER,
                                   "byte_size": INTEGER}, ("name", "key", "offset", "byte_size")),
    "SharedMemoryRegister": _object({
        "key": {"type": "string", "description": "The POSIX shared-memory key (shm_open's name)."},
        "offset": {"type": "integer", "minimum": 0}, "byte_size": {"type": "integer",
                                                                   "minimum": 1}},
        ("key", "byte_size")),
    # -- task API ---------------------------------------------------------------------------
    "Image": {"description": "An image: PNG or JPEG bytes, or raw 8-bit pixels (height x width x "
                             "channels, row-major).", "oneOf": [
        _object({"png": BASE64}, ("png",), additionalProperties=False),
        _object({"jpeg": BASE64}, ("jpeg",), additionalProperties=False),
        _object({"raw": _object({"pixels": BASE64, "height": INTEGER, "width": INTEGER,
                                 "channels": {"type": "integer", "enum": [1, 3, 4]}},
                                ("pixels", "height", "width", "channels"))},
                ("raw",), additionalProperties=False)]},
    "PngImage": _object({"png": BASE64}, ("png",)),
    "LatentVector": _array(NUMBER),
    "ImagesRequest": _object({"images": _array(_ref("Image"))}, ("images",)),
    "ClassifyRequest": _object({"images": _array(_ref("Image")), "top_k": {
        "type": "integer", "description": "Labels per image, 1..classes; 0 or absent: 1 (or use "
        "the query parameter, not both)."}}, ("images",)),
    "ClassifyResponse": _object({"model": STRING, "version": STRING, "results": _array(_object({
        "labels": _array(_object({"index": INTEGER, "name": STRING, "probability": NUMBER},
                                 ("index", "name", "probability")), description="Best first."),
        "conversion": {"type": "string", "description": "How the image became the model's "
                       "input, e.g. 'RGB 64x48 -> grey 28x28 (resized)'."}},
        ("labels", "conversion")))}, ("model", "version", "results")),
    "GenerateRequest": _object({
        "count": {"type": "integer", "description": "Images from random latents (0 or absent: "
                  "1); ignored when latents or interpolation are given."},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED,
                 "description": "Makes the latents, and so the images, reproducible; absent: the "
                 "server picks one and returns it."},
        "class_label": {"type": "integer", "description": "Required by conditional "
                        "generators, refused by the others."},
        "latents": _array(_ref("LatentVector"), description="Explicit latents, one image each."),
        "interpolation": _object({
            "start": _ref("LatentVector"), "end": _ref("LatentVector"),
            "steps": {"type": "integer", "minimum": 2, "description": "Images along the line "
                      "from start to end, both included; absent ends come from the seed."}},
            ("steps",))}),
    "GenerateResponse": _object({"model": STRING, "version": STRING, "seed": INTEGER,
                                 "images": _array(_ref("PngImage")),
                                 "latents": _array(_ref("LatentVector"))},
                                ("model", "version", "seed", "images", "latents")),
    "EncodeResponse": _object({"model": STRING, "version": STRING,
                               "latents": _array(_ref("LatentVector"))},
                              ("model", "version", "latents")),
    "DecodeRequest": _object({"latents": _array(_ref("LatentVector"))}, ("latents",)),
    "DecodeResponse": _object({"model": STRING, "version": STRING,
                               "images": _array(_ref("PngImage"))}, ("model", "version", "images")),
    "ReconstructResponse": _object({
        "model": STRING, "version": STRING, "images": _array(_ref("PngImage")),
        "errors": _array(NUMBER, description="Mean squared error per pixel on the 0..1 scale, "
                         "per image: the anomaly score.")},
        ("model", "version", "images", "errors")),
    "SuperResolveRequest": _object({"image": _ref("Image")}, ("image",)),
    "SuperResolveResponse": _object({"model": STRING, "version": STRING, "scale": INTEGER,
                                     "conversion": STRING, "image": _ref("PngImage")},
                                    ("model", "version", "scale", "conversion", "image")),
    "ModelInfo": _object({
        "name": STRING, "versions": _array(STRING),
        "task_kind": {"type": "string", "enum": [k.value for k in TaskKind] + [""]},
        "inputs": _array(_ref("TensorMetadata")), "outputs": _array(_ref("TensorMetadata")),
        "labels": _array(STRING), "num_classes": INTEGER, "latent_size": INTEGER,
        "upscale_factor": INTEGER, "color_mode": STRING, "execution_provider": STRING,
        "max_batch_size": INTEGER,
        "state": {"type": "string", "enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
        "reason": {"type": "string", "description": "Why the model is not READY; empty when it "
                   "is."}}, ("name", "state", "reason"),
        description="protos/task_service.proto's ModelInfo; a model that does not serve has only "
                    "its name, state and reason set (the others are empty)."),
    "ModelList": _object({"models": _array(_ref("ModelInfo"))}, ("models",)),
}

# Statuses of the one error map (service/http/status.py), each with the same {"error": ...} body.
ERRORS = {
    "400": "Bad input: the message names the field, what was expected and what came.",
    "401": "No API key, or an unknown one (only when the server has API keys).",
    "403": "This key's role may not make this call (repository changes need an admin key).",
    "404": "No such model, version, shared-memory region or route.",
    "409": "A shared-memory region of that name is already registered.",
    "413": "The request body is over the message-size limit (max_message_bytes).",
    "429": "The model's queue is full, or the answer would be over the message limit.",
    "500": "A fault of the server's own; the message is generic, the server log has details.",
    "503": "Not ready: the model is loading or failed to load, or the server is draining.",
    "501": "Not offered by this server (CUDA shared memory).",
    "504": "The deadline passed before the answer was ready.",
}
RESPONSES = {status: {"description": text, "content": {JSON: {"schema": _ref("Error")}}}
             for status, text in ERRORS.items()}

PATH_PARAMETERS = {
    "model": {"name": "model", "in": "path", "required": True, "schema": STRING,
              "description": "Model name."},
    "version": {"name": "version", "in": "path", "required": True, "schema": STRING,
                "description": "Model version."},
    "file": {"name": "file", "in": "path", "required": True, "schema": STRING},
    "region": {"name": "region", "in": "path", "required": True, "schema": STRING,
               "description": "Shared-memory region name."},
}
VERSION_QUERY = {"name": "version", "in": "query", "schema": STRING,
                 "description": "Model version; absent: the highest loaded one."}
TIMEOUT_QUERY = {"name": "timeout_ms", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS},
                 "description": "Deadline in milliseconds (504 when it passes)."}
TOP_K_QUERY = {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 0},
               "description": "Labels per image, 1..classes; 0 or absent: 1."}
ACCEPT_HEADER = {"name": "Accept", "in": "header", "schema": STRING}
CONTENT_ENCODING = {"name": "Content-Encoding", "in": "header",
                    "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]},
                    "description": "A compressed request body."}


def _json_content(schema: dict) -> dict:
    return {JSON: {"schema": schema}}


def _images_body(json_schema: str, description: str, part: str = "images") -> dict:
    files = _array(BINARY) if part == "images" else BINARY
    return {"required": True, "description": description, "content": {
        "image/png": {"schema": BINARY}, "image/jpeg": {"schema": BINARY},
        "multipart/form-data": {"schema": _object({part: files})},
        JSON: {"schema": _ref(json_schema)}}}


IMAGES_BODY = ("One image as the raw body (Content-Type image/png or image/jpeg), several as the "
               "file parts of a multipart/form-data body (in order), or JSON with base64 images.")


def _operation(call: str, summary: str, tag: str, responses: dict, *, errors: tuple[str, ...],
               parameters: list | None = None, body: dict | None = None,
               description: str = "", public: bool = False) -> dict:
    operation = {"operationId": call, "summary": summary, "tags": [tag],
                 "responses": {**responses, **{s: {"$ref": f"#/components/responses/{s}"}
                                               for s in errors}}}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = body
    if public:
        operation["security"] = []
    return operation


def _ok(schema: str, description: str = "OK", **more) -> dict:
    return {"200": {"description": description, "content": _json_content(_ref(schema))}, **more}


READ = ("400", "401", "404", "500", "503")
RUN = ("400", "401", "404", "413", "429", "500", "503", "504")
ADMIN = ("400", "401", "403", "404", "413", "500", "503")


def _v2_model_routes(prefix: str, suffix: str) -> dict:
    """The per-model V2 routes under `prefix` (with or without /versions/{version})."""
    infer_description = (
        "JSON, or Triton's binary tensor extension: the JSON header, then raw input bytes "
        f"(header {HEADER_LENGTH.title()} gives the JSON's length; each binary input sets "
        "parameters.binary_data_size). Outputs asked for with binary_data come back the same way.")
    header_length = {"name": HEADER_LENGTH.title(), "in": "header", "schema": INTEGER,
                     "description": "Binary tensor extension: the length of the JSON header."}
    return {
        ("GET", prefix): _operation(
            f"ModelMetadata{suffix}", "Model metadata: inputs, outputs, task parameters", "v2",
            _ok("ModelMetadata"), errors=READ),
        ("GET", prefix + "/ready"): _operation(
            f"ModelReady{suffix}", "Whether the model (version) is ready", "v2",
            _ok("ModelReady", "Ready", **{"503": {"description": "Not ready", "content":
                                                  _json_content(_ref("ModelReady"))}}),
            errors=("401",), public=True),
        ("POST", prefix + "/infer"): _operation(
            f"ModelInfer{suffix}", "Inference on tensors", "v2", {"200": {
                "description": "The outputs: JSON, or with binary outputs the JSON header "
                               "followed by their bytes",
                "headers": {HEADER_LENGTH.title(): {"schema": INTEGER, "description":
                            "Present when binary outputs follow the JSON header."}},
                "content": {**_json_content(_ref("InferResponse")), OCTETS: {"schema": BINARY}}}},
            errors=RUN, parameters=[header_length, CONTENT_ENCODING],
            description=infer_description,
            body={"required": True, "content": {**_json_content(_ref("InferRequest")),
                                                OCTETS: {"schema": BINARY}}}),
        ("GET", prefix + "/stats"): _operation(
            f"ModelStatistics{suffix}", "Inference statistics of the model (version)", "v2",
            _ok("Statistics"), errors=READ),
        ("GET", prefix + "/config"): _operation(
            f"ModelConfig{suffix}", "The model's configuration as Triton's ModelConfig", "v2",
            _ok("ModelConfig"), errors=READ),
    }


def _shared_memory_routes(kind: str, prefix: str) -> dict:
    """Status and unregister, for all regions and for one; register for one."""
    name = {"system": "SystemSharedMemory", "cuda": "CudaSharedMemory"}[kind]
    system = kind == "system"
    routes = {}
    for path, suffix, which in ((prefix, "", "every region"),
                                (prefix + "/region/{region}", "Region", "one region")):
        routes[("GET", path + "/status")] = _operation(
            f"{name}Status{suffix}", f"The registered {kind} shared-memory regions ({which})",
            "v2", {"200": {"description": "OK", "content": _json_content(
                _array(_ref("SharedMemoryRegion") if system else {"type": "object"}))}},
            errors=READ)
        routes[("POST", path + "/unregister")] = _operation(
            f"{name}Unregister{suffix}", f"Unregister {which}" + (" (admin key)" if system
                                                                  else "; none is ever registered"),
            "v2", _ok("EmptyObject"), errors=ADMIN if system else READ)
    routes[("POST", prefix + "/region/{region}/register")] = _operation(
        f"{name}Register", "Register a region (admin key)" if system else
        "Refused: this server offers system shared memory, not CUDA's", "v2",
        _ok("EmptyObject"), errors=(*ADMIN, "409") if system else ("401", "501"),
        body={"required": True, "content": _json_content(
            _ref("SharedMemoryRegister") if system else {"type": "object"})})
    return routes


def _task(call: str, summary: str, body: dict, responses: dict, extra: list | None = None,
          description: str = "") -> dict:
    return _operation(call, summary, "tasks", responses, errors=RUN, body=body,
                      parameters=[*(extra or []), VERSION_QUERY, TIMEOUT_QUERY],
                      description=description)


def _png_or_json(schema: str, headers: dict) -> dict:
    return {"200": {"description": "JSON by default; with Accept: image/png and exactly one "
                                   "image, that PNG", "headers": headers,
                    "content": {**_json_content(_ref(schema)), "image/png": {"schema": BINARY}}}}


MODEL_HEADERS = {"X-Model": {"schema": STRING}, "X-Model-Version": {"schema": STRING}}

OPERATIONS = {
    ("GET", "/v2/health/live"): _operation(
        "ServerLive", "Liveness", "v2", _ok("ServerLive"), errors=("401",), public=True),
    ("GET", "/v2/health/ready"): _operation(
        "ServerReady", "Readiness: every startup model is ready and the server is not draining",
        "v2", _ok("ServerReady", "Ready", **{"503": {
            "description": "Not ready", "content": _json_content(_ref("ServerReady"))}}),
        errors=("401",), public=True),
    ("GET", "/v2"): _operation("ServerMetadata", "Server metadata and extensions", "v2",
                               _ok("ServerMetadata"), errors=("401", "503")),
    **_v2_model_routes("/v2/models/{model}", ""),
    **_v2_model_routes("/v2/models/{model}/versions/{version}", "ByVersion"),
    ("GET", "/v2/models/stats"): _operation(
        "ModelStatisticsAll", "Inference statistics of every model", "v2", _ok("Statistics"),
        errors=READ),
    ("POST", "/v2/repository/index"): _operation(
        "RepositoryIndex", "Every model of the repository with its state", "v2", {"200": {
            "description": "OK", "content": _json_content(_array(_ref("RepositoryIndexEntry")))}},
        errors=("400", "401", "413", "500", "503"),
        body={"content": _json_content(_ref("RepositoryIndexRequest"))}),
    ("POST", "/v2/repository/models/{model}/load"): _operation(
        "RepositoryModelLoad", "Load or reload a model, optionally with a config override and "
        "its files (admin key)", "v2", _ok("EmptyObject"), errors=ADMIN,
        body={"content": _json_content(_ref("LoadRequest"))}),
    ("POST", "/v2/repository/models/{model}/unload"): _operation(
        "RepositoryModelUnload", "Unload a model (admin key)", "v2", _ok("EmptyObject"),
        errors=ADMIN, body={"content": _json_content(_ref("UnloadRequest"))}),
    **_shared_memory_routes("system", "/v2/systemsharedmemory"),
    **_shared_memory_routes("cuda", "/v2/cudasharedmemory"),
    # -- task API ---------------------------------------------------------------------------
    ("GET", "/v1/models"): _operation(
        "ListModels", "Every model with its task metadata, or its state when it does not serve",
        "tasks", _ok("ModelList"), errors=("400", "401", "500", "503")),
    ("GET", "/v1/models/{model}"): _operation(
        "DescribeModel", "One model's task metadata", "tasks", _ok("ModelInfo"), errors=READ,
        parameters=[VERSION_QUERY]),
    ("POST", "/v1/models/{model}/classify"): _task(
        "Classify", "Top-k labels for one or many images",
        _images_body("ClassifyRequest", IMAGES_BODY), _ok("ClassifyResponse"), [TOP_K_QUERY]),
    ("POST", "/v1/models/{model}/generate"): _task(
        "Generate", "Images from a generator or class-conditional generator",
        {"content": _json_content(_ref("GenerateRequest"))},
        _png_or_json("GenerateResponse", {**MODEL_HEADERS, "X-Seed": {"schema": INTEGER}}),
        [ACCEPT_HEADER]),
    ("POST", "/v1/models/{model}/superresolve"): _task(
        "SuperResolve", "One image upscaled by the model's factor",
        _images_body("SuperResolveRequest", "One image: the raw body, a multipart body of one "
                     "part, or JSON.", part="image"),
        {"200": {"description": "By default a PNG streamed with chunked transfer as the tiles "
                                "are computed (any size within max_image_pixels); with Accept: "
                                "application/json, a base64 PNG within the message limit",
                 "headers": {**MODEL_HEADERS, "X-Upscale-Scale": {"schema": INTEGER},
                             "X-Conversion": {"schema": STRING}},
                 "content": {"image/png": {"schema": BINARY},
                             **_json_content(_ref("SuperResolveResponse"))}}},
        [ACCEPT_HEADER]),
    ("POST", "/v1/models/{model}/encode"): _task(
        "Encode", "Images to latent vectors (encoder models)",
        _images_body("ImagesRequest", IMAGES_BODY), _ok("EncodeResponse")),
    ("POST", "/v1/models/{model}/decode"): _task(
        "Decode", "Latent vectors to images (decoder and generator models)",
        {"required": True, "content": _json_content(_ref("DecodeRequest"))},
        _png_or_json("DecodeResponse", MODEL_HEADERS), [ACCEPT_HEADER]),
    ("POST", "/v1/models/{model}/reconstruct"): _task(
        "Reconstruct", "Images through an autoencoder, with each one's reconstruction error",
        _images_body("ImagesRequest", IMAGES_BODY), _ok("ReconstructResponse")),
    # -- this document ------------------------------------------------------------------------
    ("GET", "/openapi.json"): _operation(
        "OpenAPI", "This document", "docs", {"200": {
            "description": "OpenAPI 3.0", "content": _json_content({"type": "object"})}},
        errors=("503",), public=True),
    ("GET", "/docs"): _operation(
        "Docs", "The interactive API docs (Swagger UI)", "docs", {"200": {
            "description": "HTML", "content": {"text/html": {"schema": STRING}}}},
        errors=("503",), public=True),
    ("GET", "/docs/static/{file}"): _operation(
        "DocsStatic", "Swagger UI's files", "docs", {"200": {
            "description": "The file", "content": {"*/*": {"schema": BINARY}}}},
        errors=("404", "503"), public=True),
    # -- the demo page (service/http/demo.py) --------------------------------------------------
    ("GET", "/"): _operation(
        "Demo", "The demo page: classify, upscale, generate and walk a latent space", "docs", {
            "200": {"description": "HTML", "content": {"text/html": {"schema": STRING}}}},
        errors=("503",), public=True),
    ("GET", "/demo/{file}"): _operation(
        "DemoStatic", "The demo page's scripts and style sheet", "docs", {"200": {
            "description": "The file", "content": {"*/*": {"schema": BINARY}}}},
        errors=("404", "503"), public=True),
}


def document() -> dict:
    paths: dict[str, dict] = {}
    for (method, template), operation in OPERATIONS.items():
        item = paths.setdefault(template, {})
        names = [part[1:-1] for part in template.split("/") if part.startswith("{")]
        if names:
            item["parameters"] = [PATH_PARAMETERS[name] for name in names]
        item[method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{SERVER_NAME} REST API", "version": SERVER_VERSION, "description": (
            "The Open Inference Protocol (KServe V2) with Triton's extensions under /v2, and the "
            "task API (images, labels and latent vectors) under /v1, over the same models, "
            "batching and metrics as gRPC. When the server has API keys, send "
            "`Authorization: Bearer <key>`; health and these docs stay public. Every error is "
            "`{\"error\": \"...\"}` with the status listed.")},
        "tags": [{"name": "v2", "description": "Open Inference Protocol (KServe V2), "
                                               "tritonclient.http compatible"},
                 {"name": "tasks", "description": "Task API (protos/task_service.proto)"},
                 {"name": "docs", "description": "This document, its docs page and the demo page"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "responses": RESPONSES, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
    }


# -- routes ---------------------------------------------------------------------------------------

_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".png": "image/png", ".map": JSON, ".html": "text/html; charset=utf-8"}
# Relative URLs, so the page works behind a proxy that serves the API under a path prefix.
DOCS_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>onnx-serve REST API</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/static/swagger-ui-bundle.js"></script>
<script src="docs/static/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout",
});
</script>
</body>
</html>
"""


class DocsRoutes:
    def __init__(self) -> None:
        self._document = orjson.dumps(document())
        folder = Path(swagger_ui_bundle.swagger_ui_path)
        self._files = {path.name: path for path in folder.iterdir()
                       if path.suffix in _STATIC_TYPES and path.name != "index.html"}
        self._cache: dict[str, bytes] = {}

    def register(self, router: Router) -> None:
        router.add("GET", "/openapi.json", self.openapi, "OpenAPI", public=True)
        router.add("GET", "/docs", self.page, "Docs", public=True)
        router.add("GET", "/docs/static/{file}", self.static, "DocsStatic", public=True)

    async def openapi(self, request: Request) -> Response:
        return Response(body=self._document, compressible=True)

    async def page(self, request: Request) -> Response:
        return Response(body=DOCS_PAGE, content_type="text/html; charset=utf-8")

    async def static(self, request: Request) -> Response:
        name = request.params["file"]
        path = self._files.get(name)
        if path is None:
            raise NotFound(f"no docs file '{name}'")
        if name not in self._cache:
            self._cache[name] = path.read_bytes()
        return Response(body=self._cache[name], content_type=_STATIC_TYPES[path.suffix],
                        headers=[(b"cache-control", b"public, max-age=86400")])
