"""Message size limits and model names that try to leave the repository."""

from __future__ import annotations

import ctypes
import io
import os
import struct

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from servers import metric_value
from onnx_builders import affine_config, affine_graph, write_model, write_task_models
from reliability_support import assert_healthy, fp32_request, health_status, output
from service._proto import task_service_pb2 as pb
from service._proto import task_service_pb2_grpc as pb_grpc

LIMIT = 65_536
WIDE = 32_768  # FP32 values: 128 KiB, twice the limit


def tile_graph(repeats: int):
    """y = x tiled `repeats` times along axis 1: a small request, a large response."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4 * repeats])
    reps = numpy_helper.from_array(np.array([1, repeats], np.int64), "reps")
    return helper.make_graph([helper.make_node("Tile", ["x", "reps"], ["y"])], "tile", [x], [y],
                             [reps])


def call(method, request, stream: bool = False):
    try:
        if stream:
            return grpc.StatusCode.OK, list(method(request, timeout=30))
        return grpc.StatusCode.OK, method(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


def test_messages_over_the_limit_are_refused_and_the_server_stays_up(tmp_path, server_factory):
    write_task_models(tmp_path)
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    write_model(tmp_path, "wide", affine_graph(1.0, 0.0, dim=WIDE), affine_config(dim=WIDE))
    write_model(tmp_path, "tile", tile_graph(WIDE // 4), affine_config(
        outputs=[{"name": "y", "datatype": "FP32", "shape": [WIDE]}]))
    server = server_factory(tmp_path, "--max-message-bytes", str(LIMIT))
    big = [("grpc.max_send_message_length", 16 * LIMIT),
           ("grpc.max_receive_message_length", 16 * LIMIT)]
    with grpc.insecure_channel(server.grpc_address, options=big) as channel:
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tasks = pb_grpc.TaskServiceStub(channel)
        x = np.random.default_rng(0).standard_normal((1, WIDE)).astype(np.float32)

        # Tensor API: refused by gRPC itself, before any decoding.
        code, details = call(kserve.ModelInfer, fp32_request("wide", x))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "larger than max" in details.lower(), details
        assert_healthy(channel)
        # The service never saw it: nothing was counted for the model, or for any RPC.
        text = server.metrics_text()
        assert metric_value(text, "inference_requests_total", model="wide") == 0
        assert metric_value(text, "inference_requests_total", rpc="ModelInfer") == 0

        # Task API: an image over the limit, the same way.
        noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        assert len(buffer.getvalue()) > LIMIT
        code, details = call(tasks.Classify, pb.ClassifyRequest(
            model="brightness", images=[pb.Image(encoded=buffer.getvalue())]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert_healthy(channel)

        # A response over the limit: a client error status, never INTERNAL or UNKNOWN.
        code, details = call(kserve.ModelInfer, fp32_request("tile", np.ones((1, 4))))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert_healthy(channel)
        # The task API's large results point to the streaming RPC (details in test_task_api).
        photo = pb.Image(raw=pb.RawImage(height=100, width=100, channels=1, pixels=bytes(10_000)))
        code, details = call(tasks.SuperResolve, pb.SuperResolveRequest(
            model="sr", image=photo, format=pb.RAW))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "SuperResolveStream" in details
        code, chunks = call(tasks.SuperResolveStream, pb.SuperResolveRequest(
            model="sr", image=photo), stream=True)
        assert code == grpc.StatusCode.OK
        assert sum(c.row_count for c in chunks) == 300
        assert all(c.ByteSize() < LIMIT for c in chunks)

        # Everything of an allowed size is still served.
        small = np.arange(8, dtype=np.float32).reshape(2, 4)
        np.testing.assert_array_equal(output(kserve.ModelInfer(
            fp32_request("affine", small), timeout=30)), small)
        code, response = call(tasks.Classify, pb.ClassifyRequest(
            model="brightness", images=[pb.Image(encoded=_png(8))]))
        assert code == grpc.StatusCode.OK and response.results[0].labels
    assert server.terminate() == 0


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- names that try to leave the repository ----------------------------------------------------

IN_ACCESS, IN_MODIFY, IN_OPEN = 0x1, 0x2, 0x20


class FileWatch:
    """inotify on directories: reports every open, read or write of them or their files."""

    def __init__(self, *paths):
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        # Linux always has inotify; without it this test could prove nothing, so it fails.
        assert self._fd >= 0, f"inotify unavailable: errno {ctypes.get_errno()}"
        self._names = {}
        for path in paths:
            wd = self._libc.inotify_add_watch(self._fd, str(path).encode(),
                                              IN_ACCESS | IN_MODIFY | IN_OPEN)
            assert wd >= 0, f"cannot watch {path}: errno {ctypes.get_errno()}"
            self._names[wd] = path

    def events(self) -> list[str]:
        found = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                wd, mask, _, size = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + size].rstrip(b"\0").decode()
                found.append(f"{self._names.get(wd)}/{name} mask={mask:#x}")
                offset += 16 + size

    def close(self):
        os.close(self._fd)


ESCAPES = ["../outside", "..", "../repo/affine", "outside/../../outside", "affine/../../outside",
           "%2e%2e%2foutside", "..%2foutside", "..\\outside", "./affine", "evil", "evil/..",
           "affine/../affine", "~/outside", "affine\x00../outside", "affine\n", ".", ""]


def test_model_names_never_reach_outside_the_repository(tmp_path, server_factory):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    write_model(repo, "affine", affine_graph(1.0, 0.0), affine_config())
    write_model(tmp_path, "outside", affine_graph(5.0, 0.0), affine_config())
    (repo / "evil").symlink_to(outside, target_is_directory=True)  # a link out of the repository
    ESCAPES.append(str(outside))
    watch = FileWatch(outside, outside / "1")
    try:
        server = server_factory(repo)
        with grpc.insecure_channel(server.grpc_address) as channel:
            kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            tasks = pb_grpc.TaskServiceStub(channel)
            for name in ESCAPES:
                rpcs = {
                    "load": (kserve.RepositoryModelLoad,
                             service_pb2.RepositoryModelLoadRequest(model_name=name)),
                    "unload": (kserve.RepositoryModelUnload,
                               service_pb2.RepositoryModelUnloadRequest(model_name=name)),
                    "metadata": (kserve.ModelMetadata, service_pb2.ModelMetadataRequest(name=name)),
                    "statistics": (kserve.ModelStatistics,
                                   service_pb2.ModelStatisticsRequest(name=name)),
                    "infer": (kserve.ModelInfer, fp32_request(name, np.ones((1, 4)))),
                    "describe": (tasks.DescribeModel, pb.DescribeModelRequest(model=name)),
                    "classify": (tasks.Classify, pb.ClassifyRequest(
                        model=name, images=[pb.Image(encoded=_png(8))])),
                }
                for rpc, (method, request) in rpcs.items():
                    code, details = call(method, request)
                    allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
                    if name in ("./affine", "affine/../affine", "affine\n") and rpc == "unload":
                        allowed.add(grpc.StatusCode.OK)  # never loaded under that name: refused
                    if name == "" and rpc == "statistics":
                        allowed.add(grpc.StatusCode.OK)  # "" means every model
                    assert code in allowed, (name, rpc, code, details)
                ready = kserve.ModelReady(service_pb2.ModelReadyRequest(name=name), timeout=10)
                assert not ready.ready, name
            index = kserve.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10)
            served = {(m.name, m.state) for m in index.models}
            assert ("affine", "READY") in served
            assert not any(state == "READY" and name != "affine" for name, state in served), served
            # The link is seen, and refused rather than followed.
            assert any("evil" in m and "escapes the repository" in m for m in server.messages())
            code, details = call(kserve.RepositoryModelLoad,
                                 service_pb2.RepositoryModelLoadRequest(model_name="evil"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "model name 'evil' escapes the repository" in details
            # 'evil' was a startup model, so the server as a whole is not ready; 'affine' is.
            assert health_status(channel, "affine") == health_pb2.HealthCheckResponse.SERVING
            np.testing.assert_array_equal(
                output(kserve.ModelInfer(fp32_request("affine", np.ones((1, 4))), timeout=10)),
                np.ones((1, 4)))
        assert watch.events() == [], "the server opened or read files outside its repository"
        # The watch itself works: our own read of the outside model is seen.
        (outside / "1" / "model.onnx").read_bytes()
        assert watch.events(), "inotify saw nothing: the check above proves nothing"
    finally:
        watch.close()
