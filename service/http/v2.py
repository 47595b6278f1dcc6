"""The Open Inference Protocol's REST routes, with Triton's extensions (repository, statistics,
model configuration, binary tensors, system shared memory, classification): a thin translation of
the same InferenceCore calls the gRPC front end makes, so `tritonclient.http` works unchanged."""

from __future__ import annotations

import base64
import binascii
import time

from google.protobuf import json_format

from service.core.description import ModelDescription
from service.core.inference import InferenceCore, VersionStatistics
from service.core.outputs import finish_outputs
from service.core.repository import LoadOverride, validate_model_name
from service.core.shared_memory import CUDA_REFUSAL, SharedMemoryRegistry
from service.core.triton_config import to_triton
from service.errors import InvalidArgument, Unimplemented
from service.http import v2_codec as codec
from service.http.framework import (
    JSON, Request, Response, Router, json_response, within_deadline,
)


def _version(request: Request) -> str:
    return request.params.get("version", "")


def _deadline(header: dict) -> float | None:
    """Triton's `timeout` request parameter, in microseconds."""
    timeout = codec.parameters(header, "request").get("timeout")
    if timeout is None:
        return None
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise InvalidArgument(f"parameters.timeout: expected microseconds, got {timeout!r}")
    return time.monotonic() + timeout / 1e6


def _tensors(tensors) -> list[dict]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def model_metadata(model: ModelDescription) -> dict:
    return {"name": model.name, "versions": list(model.versions), "platform": model.platform,
            "inputs": _tensors(model.inputs), "outputs": _tensors(model.outputs),
            "parameters": model.parameters}


def _duration(duration) -> dict:
    return {"count": duration.count, "ns": duration.ns}


def _statistics(model: VersionStatistics) -> dict:
    stats = model.stats
    return {
        "name": model.name, "version": model.version,
        "last_inference": stats.last_inference_ms, "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {field: _duration(getattr(stats, field)) for field in (
            "success", "fail", "queue", "compute_input", "compute_infer", "compute_output")},
        "batch_stats": [
            {"batch_size": size, **{field: _duration(getattr(per_size, field)) for field in (
                "compute_input", "compute_infer", "compute_output")}}
            for size, per_size in sorted(stats.by_batch_size.items())],
    }


class V2Routes:
    def __init__(self, core: InferenceCore, shm: SharedMemoryRegistry, max_load_bytes: int):
        self._core = core
        self._shm = shm
        self._max_load_bytes = max_load_bytes

    def register(self, router: Router) -> None:
        add = router.add
        add("GET", "/v2/health/live", self.live, "ServerLive", health=True)
        add("GET", "/v2/health/ready", self.ready, "ServerReady", health=True)
        add("GET", "/v2", self.server_metadata, "ServerMetadata")
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            add("GET", prefix, self.model_metadata, "ModelMetadata")
            add("GET", prefix + "/ready", self.model_ready, "ModelReady", health=True)
            add("POST", prefix + "/infer", self.infer, "ModelInfer", cancellable=True)
            add("GET", prefix + "/stats", self.statistics, "ModelStatistics")
            add("GET", prefix + "/config", self.model_config, "ModelConfig")
        add("GET", "/v2/models/stats", self.statistics, "ModelStatistics")
        add("POST", "/v2/repository/index", self.repository_index, "RepositoryIndex")
        add("POST", "/v2/repository/models/{model}/load", self.load, "RepositoryModelLoad",
            admin=True)
        add("POST", "/v2/repository/models/{model}/unload", self.unload,
            "RepositoryModelUnload", admin=True)
        # tritonclient.http's paths for the shared-memory extensions.
        for prefix in ("/v2/systemsharedmemory", "/v2/systemsharedmemory/region/{region}"):
            add("GET", prefix + "/status", self.shm_status, "SystemSharedMemoryStatus")
            add("POST", prefix + "/unregister", self.shm_unregister,
                "SystemSharedMemoryUnregister", admin=True)
        add("POST", "/v2/systemsharedmemory/region/{region}/register", self.shm_register,
            "SystemSharedMemoryRegister", admin=True)
        for prefix in ("/v2/cudasharedmemory", "/v2/cudasharedmemory/region/{region}"):
            add("GET", prefix + "/status", self.cuda_shm_status, "CudaSharedMemoryStatus")
            add("POST", prefix + "/unregister", self.cuda_shm_unregister,
                "CudaSharedMemoryUnregister")
        add("POST", "/v2/cudasharedmemory/region/{region}/register", self.cuda_shm_register,
            "CudaSharedMemoryRegister")

    # -- health and metadata --------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self._core.server_ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def model_ready(self, request: Request) -> Response:
        ready = self._core.model_ready(request.params["model"], _version(request))
        return json_response({"name": request.params["model"], "ready": ready},
                             200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        server = self._core.server_metadata()
        return json_response({"name": server.name, "version": server.version,
                              "extensions": list(server.rest_extensions),
                              "parameters": server.parameters})

    async def model_metadata(self, request: Request) -> Response:
        model = self._core.describe(request.params["model"], _version(request))
        request.note(model.name, model.version)
        return json_response(model_metadata(model))

    async def model_config(self, request: Request) -> Response:
        model, config = self._core.model_config(request.params["model"], _version(request))
        request.note(model.name, model.version)
        return json_response(json_format.MessageToDict(to_triton(model, config),
                                                       preserving_proto_field_name=True))

    async def statistics(self, request: Request) -> Response:
        name = request.params.get("model", "")
        if name:
            model = self._core.describe(name, _version(request))  # NotFound when unknown
            request.note(model.name, model.version)
        versions = self._core.statistics(name, _version(request))
        return json_response({"model_stats": [_statistics(v) for v in versions]})

    # -- inference ------------------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        header, binary = codec.split_body(request.body, request.headers.get(codec.HEADER_LENGTH))
        arrays, declared = codec.decode_inputs(header, binary, self._shm)
        names, binary_outputs, wanted = codec.requested_outputs(header, self._shm)
        request_id = header.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidArgument(f"id: expected a string, got {type(request_id).__name__}")
        deadline = _deadline(header)
        result = await within_deadline(
            deadline, self._core.infer(request.params["model"], _version(request), arrays,
                                       declared, names, deadline), request.params["model"])
        model = result.model
        request.note(model.name, model.version_label)
        head = {"model_name": model.name, "model_version": model.version_label}
        if request_id:
            head["id"] = request_id
        binary_all = not names and codec.parameters(header, "request").get(
            "binary_data_output") is True
        try:
            outputs = finish_outputs(result.outputs, wanted, model.config)
            parts, header_length = codec.encode_response(head, outputs, binary_outputs,
                                                         binary_all)
        except InvalidArgument as exc:
            exc.model, exc.version = model.name, model.version_label
            raise
        if header_length is None:
            return Response(body=parts, compressible=True)
        return Response(body=parts, content_type="application/octet-stream", compressible=True,
                        headers=[(codec.HEADER_LENGTH.encode(), str(header_length).encode())])

    # -- system shared memory (and CUDA's, refused) ----------------------------------------------

    async def shm_status(self, request: Request) -> Response:
        return json_response([{"name": r.name, "key": r.key, "offset": r.offset,
                               "byte_size": r.byte_size}
                              for r in self._shm.status(request.params.get("region", ""))])

    async def shm_register(self, request: Request) -> Response:
        body = request.json()
        self._shm.register(request.params["region"], body.get("key"), body.get("offset", 0),
                           body.get("byte_size"))
        return Response(body=b"{}", content_type=JSON)

    async def shm_unregister(self, request: Request) -> Response:
        self._shm.unregister(request.params.get("region", ""))
        return Response(body=b"{}", content_type=JSON)

    async def cuda_shm_status(self, request: Request) -> Response:
        return json_response(self._shm.cuda_status(request.params.get("region", "")))

    async def cuda_shm_unregister(self, request: Request) -> Response:
        return Response(body=b"{}", content_type=JSON)  # none is registered

    async def cuda_shm_register(self, request: Request) -> Response:
        raise Unimplemented(CUDA_REFUSAL)

    # -- repository -----------------------------------------------------------------------------

    async def repository_index(self, request: Request) -> Response:
        ready = request.json().get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument(f"ready: expected true or false, got {ready!r}")
        return json_response([{"name": row.name, "version": row.version, "state": row.state,
                               "reason": row.reason}
                              for row in self._core.repository_index(ready_only=ready)])

    async def load(self, request: Request) -> Response:
        name = validate_model_name(request.params["model"])
        params = codec.parameters(request.json(), "RepositoryModelLoad")
        values: dict[str, object] = {}
        for key, value in params.items():
            if key.startswith("file:") and isinstance(value, str):
                try:
                    value = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidArgument(f"parameter '{key}': expected the file's bytes in "
                                          "base64") from None
            values[key] = value
        await self._core.load(name, LoadOverride.from_parameters(values, self._max_load_bytes))
        return Response(body=b"{}", content_type=JSON)

    async def unload(self, request: Request) -> Response:
        name = validate_model_name(request.params["model"])
        unknown = sorted(set(codec.parameters(request.json(), "RepositoryModelUnload"))
                         - {"unload_dependents"})
        if unknown:
            raise InvalidArgument(f"RepositoryModelUnload: unknown parameter(s) {unknown}")
        await self._core.unload(name)
        return Response(body=b"{}", content_type=JSON)
