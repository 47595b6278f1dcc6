"""REST follows the same rules as gRPC: each error of the one hierarchy gets its HTTP status and
the same message, the body limit, deadlines, the drain and the request metrics; hostile bodies get
a 4xx naming the field, never a 5xx, and the server stays up."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import string
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from onnx_builders import (
    affine_config, affine_graph, fault_config, fault_graph, slow_config, slow_graph, write_model,
)
from rest_client import call, error_of
from servers import metric_value, serving, start_server, wait_for

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[], print_blob=True)


def infer_body(x: np.ndarray, name: str = "x", **extra) -> dict:
    return {"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape),
                        "data": x.reshape(-1).tolist()}], **extra}


def slow_body(work: int, rows: int = 1) -> dict:
    return {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [rows, 512], "data": [1.0] * (512 * rows)},
        {"name": "work", "datatype": "INT64", "shape": [rows, 1], "data": [work] * rows}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "affine", affine_graph(2.0, 1.0), affine_config())
    write_model(repo, "fault", fault_graph(), fault_config())
    write_model(repo, "slow", slow_graph(), slow_config(
        dynamic_batching={"max_queue_delay_us": 0, "max_queue_size": 2}))
    broken = repo / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text(json.dumps(affine_config()))
    (broken / "1").mkdir()
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx file")
    yield from serving(repo, "--max-message-bytes", "200000")


# -- the error table -------------------------------------------------------------------------------

def test_bad_input_is_400_with_the_grpc_message(server):
    status, message = error_of(call(server, "POST", "/v2/models/affine/infer",
                                    infer_body(np.ones((1, 5), np.float32))))
    assert (status, message) == (400, "input 'x': shape must be [-1, 4], got [1, 5]")
    status, message = error_of(call(server, "POST", "/v2/models/affine/infer",
                                    infer_body(np.ones((1, 4), np.float32), name="z")))
    assert (status, message) == (400, "model 'affine': missing input(s) ['x'] and unexpected "
                                      "input(s) ['z']; expected ['x']")


def test_unknown_model_version_and_route_are_404(server):
    body = infer_body(np.ones((1, 4), np.float32))
    assert error_of(call(server, "POST", "/v2/models/nope/infer", body)) == (
        404, "model 'nope' is not loaded; loaded models: ['affine', 'fault', 'slow']")
    assert error_of(call(server, "POST", "/v2/models/affine/versions/7/infer", body)) == (
        404, "model 'affine' version 7 is not loaded; loaded versions: [1]")
    assert error_of(call(server, "GET", "/v3/anything")) == (
        404, "no route /v3/anything; the REST API is described at /openapi.json")
    status, headers, _ = call(server, "DELETE", "/v2/models/affine/infer")
    assert status == 405 and headers["allow"] == "POST"


def test_a_model_that_failed_to_load_is_503_with_retry_after(server):
    status, headers, body = call(server, "POST", "/v2/models/broken/infer",
                                 infer_body(np.ones((1, 4), np.float32)))
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"].startswith("model 'broken' is not ready (UNAVAILABLE): ")
    assert call(server, "GET", "/v2/models/broken/ready")[0] == 503
    assert call(server, "GET", "/v2/health/ready")[0] == 503  # a startup model is missing
    assert call(server, "GET", "/v2/health/live")[0] == 200


def test_a_full_queue_is_429_with_retry_after(server):
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(
        call(server, "POST", "/v2/models/slow/infer", slow_body(60_000))))]
    threads[0].start()
    wait_for(lambda: metric_value(server.metrics_text(), "inference_inflight_requests",
                                  model="slow") == 1, what="the busy call in flight")
    queued = [threading.Thread(target=lambda: results.append(
        call(server, "POST", "/v2/models/slow/infer", slow_body(0)))) for _ in range(2)]
    for thread in queued:
        thread.start()
    wait_for(lambda: metric_value(server.metrics_text(), "inference_queue_depth",
                                  model="slow") == 2, what="a full queue")
    status, headers, body = call(server, "POST", "/v2/models/slow/infer", slow_body(0))
    for thread in threads + queued:
        thread.join(120)
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(body)["error"] == ("model 'slow' version 1: queue is full (2 requests "
                                         "waiting); retry with backoff")
    assert [r[0] for r in results] == [200, 200, 200]


def test_a_runtime_failure_is_500_with_a_generic_message(server):
    status, message = error_of(call(server, "POST", "/v2/models/fault/infer",
                                    infer_body(np.full((1, 1), 42.0, np.float32))))
    assert (status, message) == (500, "inference failed for model 'fault'; the server log has "
                                      "details")
    assert call(server, "GET", "/v2/health/live")[0] == 200


def test_a_body_over_the_limit_is_413_even_compressed(server):
    big = np.zeros((1, 60_000), np.float32)
    raw = json.dumps(infer_body(big)).encode()
    status, message = error_of(call(server, "POST", "/v2/models/affine/infer", raw))
    assert status == 413
    assert message == (f"the request body has {len(raw)} bytes, more than the 200000-byte limit "
                       "(max_message_bytes)")
    status, message = error_of(call(server, "POST", "/v2/models/affine/infer", gzip.compress(raw),
                                    {"Content-Encoding": "gzip"}))
    assert (status, message) == (413, "the request body inflates past the 200000-byte limit "
                                      "(max_message_bytes)")


def test_a_deadline_passing_in_the_queue_is_504_and_never_computed(server):
    before = metric_value(server.metrics_text(), "inference_requests_dropped_total",
                          model="slow", reason="deadline")
    busy = threading.Thread(target=lambda: call(server, "POST", "/v2/models/slow/infer",
                                                 slow_body(60_000)))
    busy.start()
    wait_for(lambda: metric_value(server.metrics_text(), "inference_inflight_requests",
                                  model="slow") == 1, what="the busy call in flight")
    status, message = error_of(call(server, "POST", "/v2/models/slow/infer",
                                    {**slow_body(0), "parameters": {"timeout": 100_000}}))
    busy.join(120)
    assert (status, message) == (504, "the deadline passed before model 'slow' answered")
    wait_for(lambda: metric_value(server.metrics_text(), "inference_requests_dropped_total",
                                  model="slow", reason="deadline") == before + 1,
             what="the expired request dropped from the queue")


def test_request_metrics_count_rest_calls_exactly(server):
    def count(code: str) -> float:
        return metric_value(server.metrics_text(), "inference_requests_total", model="affine",
                            version="1", rpc="ModelInfer", code=code, protocol="http")

    ok, bad = count("OK"), count("INVALID_ARGUMENT")
    for _ in range(3):
        assert call(server, "POST", "/v2/models/affine/infer",
                    infer_body(np.ones((2, 4), np.float32)))[0] == 200
    assert call(server, "POST", "/v2/models/affine/infer",
                infer_body(np.ones((1, 3), np.float32)))[0] == 400
    assert (count("OK"), count("INVALID_ARGUMENT")) == (ok + 3, bad + 1)


# -- hostile bodies --------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=5),
    max_leaves=25)


@st.composite
def infer_headers(draw):
    """Inference request headers that are nearly right: real field names with wrong types and
    values, shapes that do not match their data, binary sizes that do not match the body."""
    tensor = {
        "name": draw(st.sampled_from(["x", "", "y", 7])),
        "datatype": draw(st.sampled_from(["FP32", "INT64", "BOOL", "FP16", "BYTES", "fp32", 3])),
        "shape": draw(st.one_of(st.lists(st.integers(-2, 5), max_size=3), JSON_VALUES)),
    }
    if draw(st.booleans()):
        tensor["data"] = draw(st.one_of(st.lists(st.floats(allow_nan=False), max_size=12),
                                        st.lists(st.lists(st.integers(-2**40, 2**40),
                                                          max_size=4), max_size=4),
                                        JSON_VALUES))
    if draw(st.booleans()):
        tensor["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(-4, 64),
                                                                  JSON_VALUES))}
    header = {"inputs": draw(st.one_of(st.lists(st.just(tensor), max_size=2), JSON_VALUES))}
    if draw(st.booleans()):
        header["outputs"] = draw(st.one_of(st.just([{"name": "y", "parameters": {
            "binary_data": draw(JSON_VALUES)}}]), JSON_VALUES))
    if draw(st.booleans()):
        header["parameters"] = draw(st.one_of(st.just({"timeout": draw(JSON_VALUES)}),
                                              JSON_VALUES))
    return header


@FUZZ
@given(header=infer_headers(), binary=st.binary(max_size=64),
       header_length=st.one_of(st.none(), st.integers(-5, 400),
                               st.text(string.ascii_letters + string.digits + " -+.", max_size=4)))
def test_hostile_infer_bodies_get_a_4xx_never_a_5xx(server, header, binary, header_length):
    text = json.dumps(header).encode()
    headers = {}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = (
            str(len(text)) if header_length == 0 else str(header_length))
    status, _, body = call(server, "POST", "/v2/models/affine/infer", text + binary, headers)
    assert status == 200 or 400 <= status < 500, (status, body)
    if status != 200:
        assert json.loads(body)["error"]  # every refusal names what is wrong


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     st.integers(1, 4000).map(lambda depth: b"[" * depth + b"]" * depth),
                     st.integers(0, 400).map(lambda n: b'{"inputs": ' + b"9" * n + b"}")),
       encoding=st.sampled_from([None, "gzip", "deflate", "br"]))
def test_junk_bodies_on_every_post_route_get_a_4xx(server, raw, encoding):
    headers = {"Content-Encoding": encoding} if encoding else {}
    if encoding in ("gzip", "deflate") and raw[:1] == b"[":
        raw = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    for path in ("/v2/models/affine/infer", "/v2/repository/index",
                 "/v2/repository/models/ghost/unload"):  # not affine: {} would unload it
        status, _, body = call(server, "POST", path, raw, headers)
        assert status < 500, (path, status, body)


def test_the_server_is_live_and_serving_after_the_fuzzing(server):
    status, _, body = call(server, "POST", "/v2/models/affine/infer",
                           infer_body(np.ones((1, 4), np.float32)))
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == [3.0] * 4


# -- the drain -------------------------------------------------------------------------------------

def test_sigterm_drains_rest_calls_in_flight_and_refuses_new_ones(tmp_path):
    write_model(tmp_path, "slow", slow_graph(), slow_config())
    server = start_server(tmp_path, "--shutdown-grace", "60")
    outcome: dict = {}
    long_call = threading.Thread(target=lambda: outcome.update(
        long=call(server, "POST", "/v2/models/slow/infer", slow_body(150_000))))
    long_call.start()
    wait_for(lambda: metric_value(server.metrics_text(), "inference_inflight_requests",
                                  model="slow") == 1, what="the long call in flight")
    # A connection opened before the signal, to send a new call on once the drain began.
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.connect()
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining: 1 call(s) in flight" in server.messages(), what="the drain")
    connection.request("POST", "/v2/models/slow/infer", body=json.dumps(slow_body(0)))
    refused = connection.getresponse()
    assert refused.status == 503
    assert json.loads(refused.read()) == {
        "error": "server is shutting down; retry on another replica"}
    long_call.join(120)
    assert server.process.wait(60) == 0
    assert outcome["long"][0] == 200
    assert json.loads(outcome["long"][2])["outputs"][0]["shape"] == [1, 512]
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        call(server, "GET", "/v2/health/live", timeout=5)
    assert time.monotonic() - started < 5
