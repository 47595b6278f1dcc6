"""`inference.GRPCInferenceService`: the Open Inference Protocol front end.

A thin translation layer: protobuf in, one call into the shared core, protobuf out. Errors are raised
as ServiceError and turned into statuses by the interceptor.

ModelStreamInfer runs every request of a stream as its own task through the same path as
ModelInfer, so they batch with each other and with everyone else's, and writes each answer as it
completes. A failed request is answered with its error_message and the stream goes on; a cancelled
stream cancels its requests, which leave the batching queue at once. Each request is counted and
timed on its own (inference_requests_total{rpc="ModelStreamInfer"}, with its model, version and
code), the stream as a whole only in flight (for the drain) and when it fails as a whole.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from service._proto import grpc_service_pb2 as pb
from service._proto import grpc_service_pb2_grpc as pb_grpc
from service.core.description import Parameter
from service.core.inference import InferenceCore, InferResult, VersionStatistics
from service.core.outputs import OutputRequest, finish_outputs, output_request
from service.core.repository import LoadOverride, validate_model_name
from service.core.shared_memory import CUDA_REFUSAL, SharedMemoryRegistry
from service.core.triton_config import to_triton
from service.errors import InvalidArgument, NotFound, Unimplemented
from service.grpc.calls import deadline_of, note_call, note_stream_request
from service.grpc.kserve_codec import (
    decode_inputs, infer_response_parts, parameter_values, parts_size, split_infer_request,
    stream_response_parts,
)
from service.grpc.status import error_status
from service.limits import check_response_fits

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
_BYTES_IN_AND_OUT = {"ModelInfer", "ModelStreamInfer"}
# Requests of one stream in flight at most: past it the stream is read no further until answers
# go out, so gRPC's flow control slows a client that sends faster than it reads.
STREAM_WINDOW = 256


def add_to_server(servicer: "KServeServicer", server) -> None:
    """Register the service as the generated `add_..._to_server` does, except that ModelInfer and
    ModelStreamInfer get the requests' wire bytes and return the responses': the codec avoids
    protobuf's copies of the tensor bytes."""
    handlers = {}
    for method in SERVICE.methods:
        behaviour = getattr(servicer, method.name)
        if method.name == "ModelStreamInfer":
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour)
        elif method.name in _BYTES_IN_AND_OUT:
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
    def __init__(self, core: InferenceCore, shm: SharedMemoryRegistry, max_message_bytes: int,
                 max_load_bytes: int):
        self._core = core
        self._shm = shm
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
        result, parts = await self._infer(request_bytes, deadline_of(context))
        note_call(result.model.name, result.model.version_label)
        return b"".join(parts)

    async def _infer(self, request_bytes: bytes,
                     deadline: float | None) -> tuple[InferResult, list]:
        """A request's result and its response's parts; what raises after the model is resolved
        names it (exc.model, exc.version), as the core's errors do."""
        request, raw = split_infer_request(request_bytes)
        arrays, declared = decode_inputs(request, raw, self._shm)
        wanted = {output.name: output_request(output.name, parameter_values(output.parameters),
                                              self._shm)
                  for output in request.outputs}
        result = await self._core.infer(request.model_name, request.model_version, arrays,
                                        declared, [output.name for output in request.outputs],
                                        deadline)
        return result, self._response(request, result, wanted)

    def _response(self, request, result: InferResult, wanted: dict[str, OutputRequest]) -> list:
        model = result.model
        try:
            outputs = finish_outputs(result.outputs, wanted, model.config)
            head = pb.ModelInferResponse(
                model_name=model.name, model_version=model.version_label, id=request.id)
            parts = infer_response_parts(head, outputs)
            check_response_fits(parts_size(parts), self._max_message_bytes, "the response",
                                "send fewer items per request, request fewer outputs or have "
                                "them written to shared memory")
        except BaseException as exc:
            exc.model, exc.version = model.name, model.version_label
            raise
        return parts

    async def ModelStreamInfer(self, requests, context):
        """Bytes in and out, as ModelInfer; see the module docstring."""
        deadline = deadline_of(context)
        answers: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        running: set[asyncio.Task] = set()

        async def answer(request_bytes: bytes) -> None:
            await answers.put(await self._stream_answer(request_bytes, deadline))

        async def read() -> None:
            try:
                async for request_bytes in requests:
                    await window.acquire()
                    task = asyncio.ensure_future(answer(request_bytes))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.wait(set(running))
            finally:
                answers.put_nowait(None)  # after the last answer, or at once on a failure

        reader = asyncio.ensure_future(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
                window.release()
            await reader  # its failure, if any, ends the stream
        finally:
            for task in (reader, *running):
                task.cancel()

    async def _stream_answer(self, request_bytes: bytes, deadline: float | None) -> bytes:
        """One request of a stream, answered whatever happens (but a cancellation)."""
        started = time.perf_counter()
        model = version = request_id = ""
        code = grpc.StatusCode.OK
        try:
            result, parts = await self._infer(request_bytes, deadline)
            model, version = result.model.name, result.model.version_label
            return b"".join(stream_response_parts(parts))
        except asyncio.CancelledError as exc:
            code = grpc.StatusCode.CANCELLED
            model, version = getattr(exc, "model", ""), getattr(exc, "version", "")
            raise
        except BaseException as exc:  # noqa: BLE001 - answered on the stream, which goes on
            code, message = error_status(exc)
            model, version = getattr(exc, "model", ""), getattr(exc, "version", "")
            request_id = _request_id(request_bytes)
            return b"".join(stream_response_parts(None, message, request_id))
        finally:
            note_stream_request(model, version, code, started)

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
        # Each parameter's own value (config: string_param, files: bytes_param), checked there.
        values = {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
                  for key, value in request.parameters.items()}
        await self._core.load(name, LoadOverride.from_parameters(values, self._max_load_bytes))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        self._check_repository(request.repository_name)
        unknown = sorted(set(request.parameters) - {"unload_dependents"})
        if unknown:
            raise InvalidArgument(f"RepositoryModelUnload: unknown parameter(s) {unknown}")
        await self._core.unload(validate_model_name(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory --------------------------------------------------------------------------

    async def SystemSharedMemoryStatus(self, request, context):
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._shm.status(request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset,
                    byte_size=region.byte_size))
        return response

    async def SystemSharedMemoryRegister(self, request, context):
        self._shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        self._shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request, context):
        self._shm.cuda_status(request.name)
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request, context):
        raise Unimplemented(CUDA_REFUSAL)

    async def CudaSharedMemoryUnregister(self, request, context):
        return pb.CudaSharedMemoryUnregisterResponse()  # none is registered

    @staticmethod
    def _check_repository(name: str) -> None:
        if name:
            raise NotFound(
                f"repository_name: this server has one repository, addressed as ''; got {name!r}"
            )


def _request_id(request_bytes: bytes) -> str:
    """The id of a request that failed, for its error answer ("" when it cannot be read)."""
    try:
        return split_infer_request(request_bytes)[0].id
    except InvalidArgument:
        return ""


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
