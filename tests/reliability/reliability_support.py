"""What the reliability tests share: request builders, load loops bounded in count and time,
health checks, and the hypothesis profiles.

The tests talk to real server processes (tests/conftest.py) through tritonclient's `service_pb2`
stubs and the task API's own stubs, never through the service's `inference` package, which cannot
share a process with tritonclient's.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from tritonclient.grpc import service_pb2, service_pb2_grpc

from servers import metric_value
from support import code_of, fp32_request, output, slow_request  # noqa: F401 - re-exported

# `make test` runs a few hundred hostile cases in all; HYPOTHESIS_PROFILE=soak runs thousands.
settings.register_profile(
    "reliability", max_examples=120, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "soak", max_examples=3000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reliability"))

# Statuses a client may cause with any request; UNKNOWN and INTERNAL are server bugs.
CLIENT_STATUSES = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
}


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def draining(channel: grpc.Channel) -> bool:
    """After SIGTERM: health says NOT_SERVING, and moments later gRPC refuses new calls."""
    try:
        return health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAVAILABLE


def assert_healthy(channel: grpc.Channel) -> None:
    """The server answers a health check and still serves (SERVING)."""
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING


def gauge(server, name: str, **labels) -> float:
    return metric_value(server.metrics_text(), name, **labels)


def statistics(stub, model: str) -> service_pb2.ModelStatistics:
    response = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=model), timeout=10)
    return response.model_stats[0]


class QueueWatch:
    """Samples a model's queue depth and in-flight gauges from /metrics in a thread until
    stopped, keeping the highest value seen (a lower bound on the true peak)."""

    def __init__(self, server, model: str, limit_s: float = 120.0):
        self._server, self._model, self._limit_s = server, model, limit_s
        self.max_depth = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self._limit_s
        while not self._stop.is_set() and time.monotonic() < end:
            depth = gauge(self._server, "inference_queue_depth", model=self._model)
            self.max_depth = max(self.max_depth, depth)
            self.samples += 1
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


@dataclass
class LoopResult:
    codes: Counter = field(default_factory=Counter)
    details: dict = field(default_factory=dict)  # one message per non-OK status
    versions: Counter = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    def failures(self) -> dict:
        return {code: n for code, n in self.codes.items() if code != grpc.StatusCode.OK}


class ClosedLoop:
    """`threads` clients, each sending `make_request(i)` back to back until stopped, `max_calls`
    calls each, or `limit_s` seconds: every loop is bounded even if stop() is never reached."""

    def __init__(self, address: str, make_request, threads: int = 4, max_calls: int = 2000,
                 limit_s: float = 60.0, timeout: float = 60.0, check=None):
        self.result = LoopResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._address, self._make = address, make_request
        self._max, self._limit = max_calls, limit_s
        self._timeout, self._check = timeout, check
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def _run(self, index: int) -> None:
        end = time.monotonic() + self._limit
        with grpc.insecure_channel(self._address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for n in range(self._max):
                if self._stop.is_set() or time.monotonic() > end:
                    return
                request = self._make(index * self._max + n)
                try:
                    response = stub.ModelInfer(request, timeout=self._timeout)
                    code = grpc.StatusCode.OK
                    if self._check is not None:
                        self._check(request, response)
                except grpc.RpcError as exc:
                    code, response = exc.code(), None
                    with self._lock:
                        self.result.details.setdefault(code, exc.details())
                with self._lock:
                    self.result.codes[code] += 1
                    if response is not None:
                        self.result.versions[response.model_version] += 1

    def start(self) -> "ClosedLoop":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoopResult:
        """Stop the clients after their current call and return what they saw."""
        self._stop.set()
        return self.join()

    def join(self) -> LoopResult:
        """Wait for every client to finish its calls (bounded by max_calls and limit_s)."""
        for thread in self._threads:
            thread.join(120)
        assert not any(t.is_alive() for t in self._threads), "a client thread hung"
        return self.result

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
