"""The one shared core that every protocol front end calls.

Front ends turn their wire format into numpy arrays and back; everything between (model lookup,
validation, batching, statistics) lives here, so the tensor API and the task API behave alike.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc
import numpy as np

from service.core.repository import LoadOverride, ModelRepository, ModelVersion
from service.core.runtime import ProviderChoice
from service.core.tensors import (
    check_inputs, check_requested_outputs, from_graph_shapes, to_graph_shapes,
)
from service.errors import Unavailable
from service.metrics import Metrics

SERVER_NAME = "onnx-serve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "health", "reflection"]


@dataclass
class CallInfo:
    """What a call turned out to be about; the gRPC interceptor reads it for metric labels.

    model/version are set only once the model is found, so that names made up by clients cannot
    blow up the metrics' label sets.
    """

    model: str = ""
    version: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK
    started: float = 0.0
    token: object = None


current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "current_call", default=None
)


def note_call(model: str, version: str) -> None:
    info = current_call.get()
    if info is not None:
        info.model, info.version = model, version


@dataclass
class InferResult:
    model: ModelVersion
    outputs: dict[str, np.ndarray]  # requested outputs, in request order


class InferenceCore:
    def __init__(self, repository: ModelRepository, provider: ProviderChoice, metrics: Metrics):
        self.repository = repository
        self.metrics = metrics
        self.provider = provider
        self.startup_models: list[str] = []
        # Called as listener(model_name, ready) after every load or unload (e.g. health status).
        self.readiness_listeners: list[Callable[[str, bool], Awaitable[None]]] = []
        self.started = False
        self.draining = False
        self._inflight: dict[str, object] = {}  # gauge children by model: off the hot path

    def server_ready(self) -> bool:
        """Ready when started, not draining, and every model in `startup_models` is ready: those
        named at start, else every model of the repository except the ones this device cannot run
        (instance_kind gpu on a CPU server), which the server start takes out of the list."""
        if not self.started or self.draining:
            return False
        ready = set(self.repository.ready_names())
        return all(name in ready for name in self.startup_models)

    def model(self, name: str, version: str = "") -> ModelVersion:
        found = self.repository.get(name, version)
        note_call(name, found.version_label)
        return found

    async def infer(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        declared: Mapping[str, str],
        requested: list[str],
        deadline: float | None,
    ) -> InferResult:
        """Validate and run one request through its model's batching scheduler."""
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica")
        model = self.model(name, version)
        batch_size = check_inputs(model.config, name, inputs, declared)
        wanted = check_requested_outputs(model.config, name, requested)
        inputs = dict(inputs)
        to_graph_shapes(model.config, inputs, batch_size)
        started = time.perf_counter()
        inflight = self._inflight.get(name)
        if inflight is None:
            inflight = self._inflight[name] = self.metrics.inflight.labels(name)
        inflight.inc()
        try:
            outputs = await model.scheduler.infer(inputs, batch_size, deadline)
        except BaseException:
            model.stats.fail.add(time.perf_counter() - started)
            raise
        finally:
            inflight.dec()
        model.stats.success.add(time.perf_counter() - started)
        chosen = {output: outputs[output] for output in wanted}
        from_graph_shapes(model.config, chosen)
        return InferResult(model, chosen)

    async def load(self, name: str, override: LoadOverride | None = None) -> None:
        """Load or reload a model; listeners hear the model's readiness afterwards either way."""
        try:
            await self.repository.load(name, override)
        finally:
            await self._notify(name)

    async def unload(self, name: str) -> None:
        try:
            await self.repository.unload(name)
        finally:
            await self._notify(name)

    async def _notify(self, name: str) -> None:
        ready = name in self.repository.ready_names()
        for listener in self.readiness_listeners:
            await listener(name, ready)
