"""Faults: a failing run fails only its own batch, with INTERNAL and a generic message; broken
model files and failed warm-ups keep a model out of service while the others serve.

Complements tests/service/test_lifecycle.py (corrupt file, bad config and signature mismatch at
start) with missing and truncated files, broken reloads of a served model, and warm-up failures.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from servers import metric_value, wait_for
from onnx_builders import (
    affine_config, affine_graph, fault_config, fault_graph, save_graph, write_model,
)
from reliability_support import ClosedLoop, code_of, fp32_request, health_status, output, statistics

GENERIC = "inference failed for model '{}'; the server log has details"
# Words that would mean runtime or Python internals reached the client.
LEAKS = ("Gather", "onnxruntime", "Traceback", "Error", "idx", "indices", "line ", ".py")


def slow_fault_graph():
    """y = table[int(x)] (the fault model) after max(work) trips of a cheap Loop: a request can
    hold the model busy, so tests decide exactly which requests share a batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    work = helper.make_tensor_value_info("work", TensorProto.INT64, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Mul", ["carried_in", "one"], ["carried_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_in", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, ["batch", 1])],
    )
    nodes = [
        helper.make_node("ReduceMax", ["work"], ["trips"], keepdims=0),
        helper.make_node("Constant", [], ["true"],
                         value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "true", "x"], ["looped"], body=body),
        helper.make_node("Cast", ["looped"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "idx"], ["y"], axis=0),
    ]
    inits = [numpy_helper.from_array(np.arange(10, dtype=np.float32) * 10, "table"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    return helper.make_graph(nodes, "slow_fault", [x, work], [y], inits)


def warmup_fault_graph(dim: int = 1):
    """y = table[int(x) + 100] on [batch, dim]: every input near zero, the warm-up's all-zero
    batch included, is out of range."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])
    nodes = [helper.make_node("Cast", ["x"], ["idx"], to=TensorProto.INT64),
             helper.make_node("Add", ["idx", "hundred"], ["shifted"]),
             helper.make_node("Gather", ["table", "shifted"], ["y"], axis=0)]
    inits = [numpy_helper.from_array(np.arange(10, dtype=np.float32), "table"),
             numpy_helper.from_array(np.array(100, np.int64), "hundred")]
    return helper.make_graph(nodes, "warmup_fault", [x], [y], inits)


def fault_request(model: str, values, work: int | None = None) -> service_pb2.ModelInferRequest:
    x = np.asarray(values, np.float32).reshape(-1, 1)
    request = fp32_request(model, x)
    if work is not None:
        request.inputs.add(name="work", datatype="INT64", shape=[len(x), 1])
        request.raw_input_contents.append(np.full((len(x), 1), work, np.int64).tobytes())
    return request


def assert_generic_failure(call, model: str) -> None:
    assert code_of(call) == grpc.StatusCode.INTERNAL
    details = call.exception().details()
    assert details == GENERIC.format(model)
    assert not any(word in details for word in LEAKS), details


def failed_batches(server, model: str) -> list[int]:
    """Requests per failed batch, from the server's own log line for each failed run."""
    pattern = re.compile(rf"inference failed: model={model} version=1 batch=\d+ requests=(\d+)")
    return [int(m.group(1)) for line in server.log_lines
            if (m := pattern.search(line.get("message", "")))]


def test_failing_batch_fails_only_its_requests_then_the_next_batch_succeeds(
        tmp_path, server_factory):
    write_model(tmp_path, "slowfault", slow_fault_graph(), {
        "max_batch_size": 4,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]},
                   {"name": "work", "datatype": "INT64", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
        "dynamic_batching": {"max_queue_delay_us": 1000, "max_queue_size": 16}})
    server = server_factory(tmp_path)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        busy = stub.ModelInfer.future(fault_request("slowfault", [1], work=3_000_000), timeout=120)
        wait_for(lambda: metric_value(server.metrics_text(), "inference_inflight_requests",
                                      model="slowfault") == 1, what="busy call in flight")
        # Queued behind it, two requests of two items fill one batch of max_batch_size 4 and the
        # next two another: the marker value 10 is in the first batch only.
        first = [stub.ModelInfer.future(fault_request("slowfault", v, work=1), timeout=120)
                 for v in ([1, 2], [3, 10])]
        second = [stub.ModelInfer.future(fault_request("slowfault", v, work=1), timeout=120)
                  for v in ([4, 5], [6, 7])]
        wait_for(lambda: metric_value(server.metrics_text(), "inference_queue_depth",
                                      model="slowfault") == 4, what="four queued requests")
        assert not busy.done()
        assert code_of(busy) == grpc.StatusCode.OK
        for call in first:
            assert_generic_failure(call, "slowfault")
        assert [output(call.result()).ravel().tolist() for call in second] == [[40, 50], [60, 70]]
        # The next batch after a failure runs normally too.
        after = stub.ModelInfer(fault_request("slowfault", [9, 0], work=1), timeout=60)
        assert output(after).ravel().tolist() == [90, 0]
        stats = statistics(stub, "slowfault")
    assert stats.execution_count == 3  # busy, the second pair, the last request
    assert stats.inference_stats.fail.count == 2
    assert stats.inference_stats.success.count == 4
    assert failed_batches(server, "slowfault") == [2]
    # The cause is in the server log, with the runtime's own words.
    failure = next(line for line in server.log_lines
                   if line.get("message", "").startswith("inference failed: model=slowfault"))
    assert "Gather" in failure.get("exception", "") or "indices" in failure.get("exception", "")


def test_marker_inputs_fail_their_batches_only_under_concurrent_traffic(tmp_path, server_factory):
    write_model(tmp_path, "fault", fault_graph(), fault_config())
    server = server_factory(tmp_path)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # Alone: the marker request fails with the generic message, the next one succeeds.
        assert_generic_failure(stub.ModelInfer.future(fault_request("fault", [10]), timeout=60),
                               "fault")
        assert output(stub.ModelInfer(fault_request("fault", [3]), timeout=60)).item() == 30

        # Concurrent: 128 one-item requests, four of them carrying the marker, merged as the
        # batcher likes. Batches hold at most 16, so at least 8 run and at most 4 fail.
        markers = {5, 40, 41, 100}
        values = [[10.0 + i % 3] if i in markers else [float(i % 10)] for i in range(128)]

        def call(v):
            return stub.ModelInfer.future(fault_request("fault", v), timeout=60)

        with ThreadPoolExecutor(16) as pool:
            calls = list(pool.map(call, values))
        codes = [code_of(c) for c in calls]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.INTERNAL}
    for v, c, code in zip(values, calls, codes):
        if v[0] >= 10:
            assert code == grpc.StatusCode.INTERNAL  # every marker request fails ...
        if code == grpc.StatusCode.OK:
            assert output(c.result()).item() == v[0] * 10  # ... and what succeeds is exact
        else:
            assert_generic_failure(c, "fault")
    # Exactly the requests of failed batches failed, and each failed batch held a marker.
    lone, *batches = failed_batches(server, "fault")
    assert lone == 1
    assert sum(batches) == codes.count(grpc.StatusCode.INTERNAL)
    assert len(batches) <= len(markers)
    assert codes.count(grpc.StatusCode.OK) >= 128 - 16 * len(markers)


def test_missing_truncated_and_empty_model_files_fail_alone(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    missing = write_model(tmp_path, "missing", affine_graph(1.0, 0.0), affine_config())
    (missing / "1" / "model.onnx").unlink()
    renamed = write_model(tmp_path, "renamed", affine_graph(1.0, 0.0),
                          affine_config(model_filename="weights.onnx"))
    truncated = write_model(tmp_path, "truncated", affine_graph(1.0, 0.0), affine_config())
    data = (truncated / "1" / "model.onnx").read_bytes()
    (truncated / "1" / "model.onnx").write_bytes(data[: len(data) // 2])
    empty = write_model(tmp_path, "empty", affine_graph(1.0, 0.0), affine_config())
    (empty / "1" / "model.onnx").write_bytes(b"")
    noversion = tmp_path / "noversion"
    noversion.mkdir()
    (noversion / "config.yaml").write_text((tmp_path / "affine" / "config.yaml").read_text())
    server = server_factory(tmp_path)

    with triton.InferenceServerClient(server.grpc_address) as client, \
            grpc.insecure_channel(server.grpc_address) as channel:
        x = np.ones((1, 4), np.float32)
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        assert client.infer("affine", [tensor]).as_numpy("y").tolist() == x.tolist()
        reasons = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert reasons["affine"][0] == "READY"
        expected = {
            "missing": f"{missing}/1/model.onnx: model file not found",
            "renamed": f"{renamed}/1/weights.onnx: model file not found",
            "truncated": f"{truncated}/1/model.onnx: ONNX Runtime cannot load the model",
            "empty": f"{empty}/1/model.onnx: ONNX Runtime cannot load the model",
            "noversion": f"{noversion}: no version directories",
        }
        for name, fragment in expected.items():
            state, reason = reasons[name]
            assert state == "UNAVAILABLE" and fragment in reason, (name, reason)
            assert not client.is_model_ready(name)
            assert health_status(channel, name) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(InferenceServerException) as info:
                client.infer(name, [tensor])
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert f"model '{name}' is not ready (UNAVAILABLE)" in info.value.message()
            with pytest.raises(InferenceServerException) as info:
                client.load_model(name)
            assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
            assert fragment in info.value.message()
        assert health_status(channel, "affine") == health_pb2.HealthCheckResponse.SERVING

        # Repaired on disk, a load brings it into service.
        save_graph(affine_graph(2.0, 0.0), missing / "1" / "model.onnx")
        client.load_model("missing")
        assert client.infer("missing", [tensor]).as_numpy("y").tolist() == (2 * x).tolist()
        assert health_status(channel, "missing") == health_pb2.HealthCheckResponse.SERVING


def test_broken_reload_keeps_the_served_version_serving(tmp_path, server_factory):
    model_dir = write_model(tmp_path, "affine", affine_graph(3.0, 0.0), affine_config())
    write_model(tmp_path, "side", affine_graph(1.0, 0.0), affine_config())
    server = server_factory(tmp_path)

    def check(request, response):
        x = np.frombuffer(request.raw_input_contents[0], np.float32)
        assert np.array_equal(output(response).ravel(), x * 3)

    with triton.InferenceServerClient(server.grpc_address) as client, \
            grpc.insecure_channel(server.grpc_address) as channel, \
            ClosedLoop(server.grpc_address,
                       lambda i: fp32_request("affine", np.full((2, 4), i % 7, np.float32)),
                       threads=3, max_calls=5000, limit_s=60, check=check) as traffic:
        wait_for(lambda: traffic.result.calls > 20, what="traffic flowing")
        good = save_graph(affine_graph(1.0, 0.0), tmp_path / "scratch.onnx").read_bytes()
        broken = {  # how version 2 is broken -> what the refusal says
            "corrupt": (lambda p: p.write_bytes(b"\x08\x07garbage"),
                        "ONNX Runtime cannot load the model"),
            "truncated": (lambda p: p.write_bytes(good[:40]), "ONNX Runtime cannot load the model"),
            "warm-up": (lambda p: save_graph(warmup_fault_graph(dim=4), p), "warm-up run failed"),
            "missing": (lambda p: None, "model file not found"),
        }
        (model_dir / "2").mkdir()
        for kind, (breaks, fragment) in broken.items():
            target = model_dir / "2" / "model.onnx"
            target.unlink(missing_ok=True)
            breaks(target)
            with pytest.raises(InferenceServerException) as info:
                client.load_model("affine")
            assert info.value.status() == "StatusCode.FAILED_PRECONDITION", kind
            assert f"{model_dir}/2/model.onnx: {fragment}" in info.value.message(), kind
            assert client.is_model_ready("affine") and client.is_model_ready("affine", "1")
            assert health_status(channel, "affine") == health_pb2.HealthCheckResponse.SERVING
            before = traffic.result.calls
            wait_for(lambda: traffic.result.calls > before + 10, what="traffic after the reload")
        shutil.rmtree(model_dir / "2")
        result = traffic.stop()
        index = {(m.name, m.version, m.state) for m in client.get_model_repository_index().models}
    assert result.failures() == {}, result.details
    assert set(result.versions) == {"1"}
    assert ("affine", "1", "READY") in index
    assert metric_value(server.metrics_text(), "inference_model_ready",
                        model="affine", version="1") == 1


def test_model_failing_warm_up_is_not_marked_ready(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    config = fault_config()
    broken = write_model(tmp_path, "warmfail", warmup_fault_graph(), config)
    server = server_factory(tmp_path)
    path = broken / "1" / "model.onnx"

    with triton.InferenceServerClient(server.grpc_address) as client, \
            grpc.insecure_channel(server.grpc_address) as channel:
        assert not client.is_model_ready("warmfail")
        assert not client.is_server_ready()  # a startup model is missing
        assert client.is_model_ready("affine")
        reasons = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert reasons["warmfail"][0] == "UNAVAILABLE"
        assert f"{path}: warm-up run failed" in reasons["warmfail"][1]
        assert health_status(channel, "warmfail") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        text = server.metrics_text()
        # Never ready: no version series, only the version-less 'not ready' one the alert uses.
        assert 'inference_model_ready{model="warmfail",version=""} 0.0' in text
        assert 'inference_model_ready{model="warmfail",version="1"}' not in text
        assert metric_value(text, "inference_model_ready", model="affine", version="1") == 1

        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # Inputs the model could run (int(x) + 100 in range needs x near -95) are still refused:
        # the model never went into service.
        call = stub.ModelInfer.future(fault_request("warmfail", [-95.0]), timeout=30)
        assert code_of(call) == grpc.StatusCode.UNAVAILABLE
        assert "model 'warmfail' is not ready (UNAVAILABLE)" in call.exception().details()
        with pytest.raises(InferenceServerException) as info:
            client.load_model("warmfail")
        assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert f"{path}: warm-up run failed" in info.value.message()
        assert not client.is_model_ready("warmfail")
        # The rest of the server is untouched.
        assert output(stub.ModelInfer(fp32_request("affine", np.ones((1, 4))), timeout=30)) \
            .tolist() == [[1.0] * 4]
