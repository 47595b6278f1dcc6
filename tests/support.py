"""Helpers that tests in several folders share: request builders for the test models, and one way
to expect an error from tritonclient or a plain gRPC stub.

Like servers.py it lives in tests/ itself, so every test module imports it as `from support import
...`; it uses tritonclient's protobuf stubs, never the service's own `inference` package.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from servers import metric_value, wait_for


@pytest.fixture
def client(server):
    """tritonclient.grpc on the module's `server` fixture; a module takes it with
    `from support import client`."""
    with triton.InferenceServerClient(server.grpc_address) as c:
        yield c


def expect_error(call, code: str | grpc.StatusCode, *fragments: str) -> str:
    """`call()` fails with status `code` (a gRPC name such as "INVALID_ARGUMENT" or a StatusCode;
    for tritonclient.http, the HTTP status such as "404") and a message holding every fragment;
    returns the message. Takes tritonclient's errors (both protocols) and gRPC's."""
    name = code if isinstance(code, str) else code.name
    expected = name if name.isdigit() else f"StatusCode.{name}"
    with pytest.raises((InferenceServerException, grpc.RpcError)) as info:
        call()
    error = info.value
    if isinstance(error, InferenceServerException):
        status, message = error.status(), error.message()
    else:
        status, message = f"StatusCode.{error.code().name}", error.details()
    assert status == expected, f"{status}: {message}"
    for fragment in fragments:
        assert fragment in message, message
    return message


def slow_request(work: int, model: str = "slow", rows: int = 1,
                 seed: int | None = None) -> service_pb2.ModelInferRequest:
    """A request to the slow model: `work` loop trips, `rows` items of 512 values."""
    x = (np.ones((rows, 512), np.float32) if seed is None
         else np.random.default_rng(seed).standard_normal((rows, 512)).astype(np.float32))
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 512])
    request.inputs.add(name="work", datatype="INT64", shape=[rows, 1])
    request.raw_input_contents.extend([x.tobytes(), np.full((rows, 1), work, np.int64).tobytes()])
    return request


def fp32_request(model: str, x: np.ndarray, name: str = "x",
                 version: str = "") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, np.float32).tobytes())
    return request


def output(response: service_pb2.ModelInferResponse, index: int = 0) -> np.ndarray:
    tensor = response.outputs[index]
    return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(tensor.shape)


def code_of(call) -> grpc.StatusCode:
    """The status of a finished gRPC future."""
    try:
        call.result()
    except grpc.FutureCancelledError:
        return grpc.StatusCode.CANCELLED
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK




def wait_until_computing(server, model: str) -> None:
    """Return once `model` has exactly one request in flight (e.g. a slow one holding it)."""
    wait_for(lambda: metric_value(server.metrics_text(), "inference_inflight_requests",
                                  model=model) == 1, what=f"a request of '{model}' in flight")


def wait_until_queued(server, model: str, depth: int) -> None:
    wait_for(lambda: metric_value(server.metrics_text(), "inference_queue_depth",
                                  model=model) == depth, what=f"{depth} requests queued")
