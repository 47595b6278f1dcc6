"""`inference.GRPCInferenceService`: the Open Inference Protocol front end.

A thin translation layer: protobuf in, one call into the shared core, protobuf out. Errors are raised
as ServiceError and turned into statuses by the interceptor.
"""

from __future__ import annotations

import grpc

from service._proto import grpc_service_pb2 as pb
from service._proto import grpc_service_pb2_grpc as pb_grpc
from service.core.description import Parameter
from service.core.inference import InferenceCore, VersionStatistics
from service.core.repository import LoadOverride, validate_model_name
from service.core.triton_config import to_triton
from service.errors import InvalidArgument, NotFound
from service.grpc.calls import deadline_of, note_call
from service.grpc.kserve_codec import (
    decode_inputs, infer_response_bytes, split_infer_request,
)
from service.limits import check_response_fits

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


def _param(value: Parameter) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


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
        return pb.ModelReadyResponse(ready=self._core.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        server = self._core.server_metadata()
        response = pb.ServerMetadataResponse(
            name=server.name, version=server.version, extensions=server.extensions)
        for key, value in server.parameters.items():
            response.parameters[key].CopyFrom(_param(value))
        return response

    async def ModelMetadata(self, request, context):
        model = self._core.describe(request.name, request.version)
        note_call(model.name, model.version)
        response = pb.ModelMetadataResponse(
            name=model.name, versions=model.versions, platform=model.platform)
        for group, tensors in ((response.inputs, model.inputs), (response.outputs, model.outputs)):
            for tensor in tensors:
                group.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for key, value in model.parameters.items():
            response.parameters[key].CopyFrom(_param(value))
        return response

    async def ModelInfer(self, request_bytes: bytes, context) -> bytes:
        """Wire bytes in and out (see `add_to_server` and kserve_codec)."""
        request, raw = split_infer_request(request_bytes)
        arrays, declared = decode_inputs(request, raw)
        result = await self._core.infer(
            request.model_name,
            request.model_version,
            arrays,
            declared,
            [output.name for output in request.outputs],
            deadline_of(context),
        )
        model = result.model
        note_call(model.name, model.version_label)
        check_response_fits(sum(array.nbytes for array in result.outputs.values()),
                            self._max_message_bytes, "the response",
                            "send fewer items per request or request fewer outputs")
        head = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version_label, id=request.id)
        datatypes = {spec.name: spec.datatype for spec in model.config.outputs}
        return infer_response_bytes(head, result.outputs, datatypes)

    async def ModelStatistics(self, request, context):
        if request.name:
            model = self._core.describe(request.name, request.version)  # NotFound when unknown
            note_call(model.name, model.version)
        versions = self._core.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(v) for v in versions])

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for row in self._core.repository_index(ready_only=request.ready):
            response.models.add(name=row.name, version=row.version, state=row.state,
                                reason=row.reason)
        return response

    async def ModelConfig(self, request, context):
        model, config = self._core.model_config(request.name, request.version)
        note_call(model.name, model.version)
        return pb.ModelConfigResponse(config=to_triton(model, config))

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


def _statistics(model: VersionStatistics) -> pb.ModelStatistics:
    stats = model.stats
    out = pb.ModelStatistics(
        name=model.name,
        version=model.version,
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
