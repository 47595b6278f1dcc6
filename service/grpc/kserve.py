"""`inference.GRPCInferenceService`: the Open Inference Protocol front end.

A thin translation layer: protobuf in, one call into the shared core, protobuf out. Errors are raised
as ServiceError and turned into statuses by the interceptor.
"""

from __future__ import annotations

import json
import time

import grpc

from service._proto import grpc_service_pb2 as pb
from service._proto import grpc_service_pb2_grpc as pb_grpc
from service.core.config import ModelConfig
from service.core.inference import EXTENSIONS, SERVER_NAME, SERVER_VERSION, InferenceCore
from service.core.repository import LoadOverride, ModelState, ModelVersion, validate_model_name
from service.core.tensors import full_shape
from service.core.triton_config import to_triton
from service.settings import MESSAGE_ENVELOPE_BYTES
from service.errors import InvalidArgument, NotFound, ResourceExhausted, ServiceError
from service.grpc.kserve_codec import (
    decode_inputs, infer_response_bytes, split_infer_request,
)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
_BYTES_IN_AND_OUT = {"ModelInfer"}


def add_to_server(servicer: "KServeServicer", server) -> None:
    """Register the service as the generated `add_..._to_server` does, except that ModelInfer gets
    the request's wire bytes and returns the response's: its codec avoids protobuf's copies of the
    tensor bytes."""
    handlers = {}
    for method in SERVICE.methods:
        behaviour = getattr(servicer, method.name)
        if method.name in _BYTES_IN_AND_OUT:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=getattr(pb, method.input_type.name).FromString,
                response_serializer=getattr(pb, method.output_type.name).SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _param(value) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def task_parameters(config: ModelConfig) -> dict[str, object]:
    """Task metadata as flat key/values; lists and nested objects as JSON strings."""
    params: dict[str, object] = {"task_kind": config.task.kind.value,
                                 "max_batch_size": config.max_batch_size}
    for key, value in config.task.model_dump(mode="json", exclude_none=True).items():
        if key == "kind":
            continue
        params[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return params


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore, max_message_bytes: int, max_load_bytes: int):
        self._core = core
        self._max_message_bytes = max_message_bytes
        self._max_load_bytes = max_load_bytes

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._core.server_ready())

    async def ModelReady(self, request, context):
        try:
            self._core.model(request.name, request.version)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self._core.draining)

    async def ServerMetadata(self, request, context):
        response = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS
        )
        response.parameters["execution_provider"].CopyFrom(_param(self._core.provider.provider))
        response.parameters["execution_provider_reason"].CopyFrom(
            _param(self._core.provider.reason)
        )
        return response

    async def ModelMetadata(self, request, context):
        model = self._core.model(request.name, request.version)
        config = model.config
        response = pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v.version) for v in self._core.repository.loaded_versions(model.name)],
            platform=config.platform,
        )
        for group, specs in ((response.inputs, config.inputs), (response.outputs, config.outputs)):
            for spec in specs:
                group.add(name=spec.name, datatype=spec.datatype, shape=full_shape(spec, config))
        params = {"execution_provider": model.runtime.provider, **task_parameters(config)}
        for key, value in params.items():
            response.parameters[key].CopyFrom(_param(value))
        return response

    async def ModelInfer(self, request_bytes: bytes, context) -> bytes:
        """Wire bytes in and out (see `add_to_server` and kserve_codec)."""
        request, raw = split_infer_request(request_bytes)
        arrays, declared = decode_inputs(request, raw)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        result = await self._core.infer(
            request.model_name,
            request.model_version,
            arrays,
            declared,
            [output.name for output in request.outputs],
            deadline,
        )
        size = sum(array.nbytes for array in result.outputs.values())
        if size + MESSAGE_ENVELOPE_BYTES > self._max_message_bytes:
            raise ResourceExhausted(
                f"the response needs {size} bytes of outputs, more than the "
                f"{self._max_message_bytes}-byte message limit; send fewer items per request "
                "or request fewer outputs"
            )
        head = pb.ModelInferResponse(
            model_name=result.model.name, model_version=result.model.version_label, id=request.id
        )
        datatypes = {spec.name: spec.datatype for spec in result.model.config.outputs}
        return infer_response_bytes(head, result.outputs, datatypes)

    async def ModelStatistics(self, request, context):
        if request.name:
            self._core.model(request.name, request.version)  # NotFound for unknown ones
            versions = [v for v in self._core.repository.loaded_versions(request.name)
                        if not request.version or v.version_label == request.version]
        else:
            versions = self._core.repository.loaded_versions()
        return pb.ModelStatisticsResponse(model_stats=[_statistics(v) for v in versions])

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        seen = set()
        for entry in self._core.repository.entries():
            seen.add(entry.name)
            if entry.versions:
                for number in sorted(entry.versions):
                    response.models.add(name=entry.name, version=str(number), state="READY")
            elif not request.ready:
                response.models.add(name=entry.name, state=entry.state.value, reason=entry.reason)
        if not request.ready:
            for name in self._core.repository.available_names():
                if name not in seen:
                    response.models.add(
                        name=name, state=ModelState.UNAVAILABLE.value, reason="not loaded"
                    )
        return response

    async def ModelConfig(self, request, context):
        model = self._core.model(request.name, request.version)
        return pb.ModelConfigResponse(
            config=to_triton(model.config, model.name, model.runtime.provider)
        )

    async def RepositoryModelLoad(self, request, context):
        self._check_repository(request.repository_name)
        name = validate_model_name(request.model_name)
        await self._core.load(name, self._override(request.parameters))
        return pb.RepositoryModelLoadResponse()

    def _override(self, parameters) -> LoadOverride | None:
        """tritonclient's load_model(config=..., files=...) parameters, checked."""
        if not parameters:
            return None
        config_json, files, total = None, {}, 0
        for key, value in parameters.items():
            kind = value.WhichOneof("parameter_choice")
            if key == "config":
                if kind != "string_param":
                    raise InvalidArgument("parameter 'config': expected a JSON string")
                config_json = value.string_param
            elif key.startswith("file:"):
                if kind != "bytes_param":
                    raise InvalidArgument(f"parameter '{key}': expected the file's bytes")
                files[key[len("file:"):]] = value.bytes_param
                total += len(value.bytes_param)
            else:
                raise InvalidArgument(
                    f"RepositoryModelLoad: unknown parameter '{key}'; expected 'config' and "
                    "'file:<version>/<file name>'"
                )
        if files and config_json is None:
            raise InvalidArgument("RepositoryModelLoad: files need a 'config' parameter too")
        if total > self._max_load_bytes:
            raise InvalidArgument(
                f"RepositoryModelLoad: files total {total} bytes; the limit is "
                f"{self._max_load_bytes} (max_load_file_bytes)"
            )
        return LoadOverride(config_json, files)

    async def RepositoryModelUnload(self, request, context):
        self._check_repository(request.repository_name)
        unknown = sorted(set(request.parameters) - {"unload_dependents"})
        if unknown:
            raise InvalidArgument(f"RepositoryModelUnload: unknown parameter(s) {unknown}")
        await self._core.unload(validate_model_name(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    @staticmethod
    def _check_repository(name: str) -> None:
        if name:
            raise NotFound(
                f"repository_name: this server has one repository, addressed as ''; got {name!r}"
            )


def _duration(target: pb.StatisticDuration, source) -> None:
    target.count, target.ns = source.count, source.ns


def _statistics(model: ModelVersion) -> pb.ModelStatistics:
    stats = model.stats
    out = pb.ModelStatistics(
        name=model.name,
        version=model.version_label,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
    )
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _duration(getattr(out.inference_stats, field), getattr(stats, field))
    for size in sorted(stats.by_batch_size):
        per_size = stats.by_batch_size[size]
        batch = out.batch_stats.add(batch_size=size)
        for field in ("compute_input", "compute_infer", "compute_output"):
            _duration(getattr(batch, field), getattr(per_size, field))
    return out
