"""Locust users that speak the Open Inference Protocol over gRPC.

    locust -f loadtest/locustfile.py --host grpc://localhost:8001 \
        --model fashion_mlp --batch-size 8 --payload real --deadline-ms 1000

Every option has an environment variable (LOADTEST_MODEL, LOADTEST_BATCH_SIZE, LOADTEST_PAYLOAD,
LOADTEST_DEADLINE_MS, LOADTEST_MAX_REQUESTS, LOADTEST_IMAGE_SIZE), and the master passes them to
its workers.
Users are closed-loop (no think time): the load is set by the number of users.
"""

from __future__ import annotations

import time

# grpcio blocks the whole process in its C core unless told to cooperate with gevent, which
# Locust runs on: this must happen before any channel exists.
import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task
from locust.exception import StopUser
from tritonclient.grpc import service_pb2

grpc_gevent.init_gevent()

try:  # `locust -f loadtest/locustfile.py` from the repo root, or from inside loadtest/
    from loadtest.payloads import (MODEL_INFER, MODEL_METADATA, infer_request_bytes, make_inputs,
                                   signature_from_metadata)
except ImportError:
    from payloads import (MODEL_INFER, MODEL_METADATA, infer_request_bytes, make_inputs,
                          signature_from_metadata)


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--model", env_var="LOADTEST_MODEL", default="fashion_mlp",
                        help="model to call")
    parser.add_argument("--batch-size", env_var="LOADTEST_BATCH_SIZE", type=int, default=1,
                        help="items per request")
    parser.add_argument("--payload", env_var="LOADTEST_PAYLOAD", choices=["real", "generated"],
                        default="real",
                        help="real Fashion-MNIST images (when the input is one) or random data")
    parser.add_argument("--deadline-ms", env_var="LOADTEST_DEADLINE_MS", type=float,
                        default=1000.0, help="gRPC deadline per call")
    parser.add_argument("--max-requests", env_var="LOADTEST_MAX_REQUESTS", type=int, default=0,
                        help="stop after this many ModelInfer calls per load process (0: no limit)")
    parser.add_argument("--image-size", env_var="LOADTEST_IMAGE_SIZE", type=int, default=256,
                        help="size of variable image dims (super-resolution)")


def _target(host: str) -> str:
    for prefix in ("grpc://", "http://"):
        if host.startswith(prefix):
            return host[len(prefix):]
    return host


class GrpcUser(User):
    """Locust's custom-client pattern: one channel per user, each call reported as a request
    event (request_type 'grpc')."""

    abstract = True
    wait_time = constant(0)

    def on_start(self):
        self.channel = grpc.insecure_channel(
            _target(self.host or "localhost:8001"),
            options=[("grpc.max_receive_message_length", 256 << 20),
                     ("grpc.max_send_message_length", 256 << 20)],
        )

    def on_stop(self):
        self.channel.close()

    def call(self, name: str, method, payload: bytes, timeout: float):
        started = time.perf_counter()
        length, error = 0, None
        try:
            response = method(payload, timeout=timeout)
            length = len(response)
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=length, exception=error, context={},
        )


class ModelInferUser(GrpcUser):
    """`ModelInfer` (tensor API) with raw contents; the request is built once and sent as bytes."""

    def on_start(self):
        super().on_start()
        options = self.environment.parsed_options
        self.timeout = options.deadline_ms / 1000.0
        metadata = self.channel.unary_unary(
            MODEL_METADATA, request_serializer=service_pb2.ModelMetadataRequest.SerializeToString,
            response_deserializer=service_pb2.ModelMetadataResponse.FromString,
        )(service_pb2.ModelMetadataRequest(name=options.model), timeout=10)
        signature = signature_from_metadata(metadata)
        inputs, payload = make_inputs(signature, options.batch_size, options.payload,
                                      options.image_size)
        self.payload = infer_request_bytes(options.model, inputs, signature)
        self.name = f"ModelInfer {options.model} b{options.batch_size} {payload}"
        # Bytes in, bytes out: no protobuf work per call on the load generator.
        self.infer = self.channel.unary_unary(MODEL_INFER)

    sent = 0  # per load process, for --max-requests

    @task
    def model_infer(self):
        limit = self.environment.parsed_options.max_requests
        if limit and ModelInferUser.sent >= limit:
            # Outside this greenlet: quit() stops every user, this one included.
            gevent.spawn(self.environment.runner.quit)
            raise StopUser()
        ModelInferUser.sent += 1
        self.call(self.name, self.infer, self.payload, self.timeout)
