"""The one shared core that every protocol front end calls.

Front ends turn their wire format into numpy arrays and back, and everything else goes through this
class: model lookup, validation, batching, statistics, descriptions, the repository's lifecycle and
the server's readiness and drain. A front end never reaches the repository or the batcher itself.

Two ways to run a model:
- `infer` for requests off the wire: it resolves the model and validates names, datatypes, shapes
  and batch size against the config;
- `hold` + `run` for trusted callers (the task layer) that build their inputs from the config: the
  version is resolved once and kept for the whole call, so a reload cannot swap the config under a
  running upscale.
Both report the resolved model and version on their results, and as `model` and `version`
attributes on whatever they raise after resolving it (a ServiceError, or a cancellation), which is
all a front end needs for its metric labels.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np

from service.core.config import ModelConfig
from service.core.description import (
    EXTENSIONS, SERVER_NAME, SERVER_VERSION, IndexEntry, ModelDescription, ServerDescription,
    describe_tensors,
)
from service.core.repository import LoadOverride, ModelRepository, ModelState, ModelVersion
from service.core.runtime import ProviderChoice
from service.core.stats import VersionStats
from service.core.tensors import (
    check_inputs, check_requested_outputs, from_graph_shapes, from_runtime_strings,
    to_graph_shapes, to_runtime_strings,
)
from service.errors import ModelSkipped, ServiceError, StartupError, Unavailable
from service.metrics import Metrics

log = logging.getLogger(__name__)

DRAINING_MESSAGE = "server is shutting down; retry on another replica"


@dataclass
class InferResult:
    model: ModelVersion
    outputs: dict[str, np.ndarray]  # requested outputs, in request order


@dataclass(frozen=True)
class VersionStatistics:
    name: str
    version: str
    stats: VersionStats


class InferenceCore:
    def __init__(self, repository: ModelRepository, provider: ProviderChoice, metrics: Metrics):
        self._repository = repository
        self._metrics = metrics
        self._provider = provider
        self._startup_models: list[str] | None = None  # None until start() has loaded them
        self._draining = False
        # Called as listener(model_name, ready) after every load or unload (e.g. health status).
        self.readiness_listeners: list[Callable[[str, bool], Awaitable[None]]] = []
        self._inflight: dict[str, object] = {}  # gauge children by model: off the hot path

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, names: list[str] | None) -> None:
        """Load the startup models (`None`: every model in the repository). A name that is not in
        the repository stops the start; a model that fails to load is reported, not fatal, and
        keeps the server not ready. A model this device cannot run (instance_kind gpu on a CPU
        server) is skipped with one line and, unless named, readiness does not wait for it."""
        self._repository.check_root()
        available = self._repository.available_names()
        named = names is not None
        names = list(names) if named else available
        unknown = [name for name in names if name not in available]
        if unknown:
            raise StartupError(f"startup model(s) {unknown} not in repository "
                               f"{self._repository.root}; it has {available}")
        counted = list(names)
        for name in names:
            try:
                await self.load(name)
            except ModelSkipped as exc:
                log.info("model '%s' not served on this device: %s", name, exc.message)
                if not named:
                    counted.remove(name)
            except ServiceError as exc:
                # One broken model must not take the others down.
                log.error("model '%s' not served: %s", name, exc.message)
        self._startup_models = counted

    def begin_drain(self) -> None:
        """From now on the server is not ready and refuses new calls."""
        self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    async def close(self) -> None:
        await self._repository.close()

    async def load(self, name: str, override: LoadOverride | None = None) -> None:
        """Load or reload a model; listeners hear the model's readiness afterwards either way."""
        try:
            await self._repository.load(name, override)
        finally:
            await self._notify(name)

    async def unload(self, name: str) -> None:
        try:
            await self._repository.unload(name)
        finally:
            await self._notify(name)

    async def _notify(self, name: str) -> None:
        ready = name in self._repository.ready_names()
        for listener in self.readiness_listeners:
            await listener(name, ready)

    # -- queries --------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._startup_models is not None

    def server_ready(self) -> bool:
        """Ready when started, not draining, and every startup model is ready: those named at
        start, else every model of the repository but the ones this device cannot run
        (instance_kind gpu on a CPU server, see start)."""
        if self._startup_models is None or self._draining:
            return False
        ready = set(self._repository.ready_names())
        return all(name in ready for name in self._startup_models)

    def model_ready(self, name: str, version: str = "") -> bool:
        if self._draining:
            return False
        try:
            self._repository.get(name, version)
        except ServiceError:
            return False
        return True

    def ready_names(self) -> list[str]:
        return self._repository.ready_names()

    def server_metadata(self) -> ServerDescription:
        return ServerDescription(SERVER_NAME, SERVER_VERSION, EXTENSIONS,
                                 self._provider.provider, self._provider.reason)

    def describe(self, name: str, version: str = "") -> ModelDescription:
        """The model version a request names (or the latest), as every protocol describes it."""
        return self.describe_version(self._repository.get(name, version))

    def describe_version(self, model: ModelVersion) -> ModelDescription:
        config = model.config
        return ModelDescription(
            name=model.name,
            version=model.version_label,
            versions=tuple(v.version_label for v in self._repository.loaded_versions(model.name)),
            platform=config.platform,
            inputs=describe_tensors(config.inputs, config),
            outputs=describe_tensors(config.outputs, config),
            execution_provider=model.runtime.provider,
            max_batch_size=config.max_batch_size,
            task=config.task,
        )

    def model_config(self, name: str, version: str = "") -> tuple[ModelDescription, ModelConfig]:
        """The description and the full config, for the protocols' model-configuration call."""
        model = self._repository.get(name, version)
        return self.describe_version(model), model.config

    def statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        """Cumulative statistics per loaded version: of one model (one version), or of all."""
        if name:
            self._repository.get(name, version)  # NotFound for unknown ones
        versions = [v for v in self._repository.loaded_versions(name)
                    if not version or v.version_label == version]
        return [VersionStatistics(v.name, v.version_label, v.stats) for v in versions]

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every ready version; unless `ready_only`, also every model known but not serving, and
        every model on disk never loaded."""
        rows: list[IndexEntry] = []
        for entry in self._repository.entries():
            if entry.versions:
                rows += [IndexEntry(entry.name, str(v), ModelState.READY.value, "")
                         for v in sorted(entry.versions)]
            elif not ready_only:
                rows.append(IndexEntry(entry.name, "", entry.state.protocol_state, entry.reason))
        if not ready_only:
            known = {entry.name for entry in self._repository.entries()}
            rows += [IndexEntry(name, "", ModelState.FAILED.protocol_state, "not loaded")
                     for name in self._repository.available_names() if name not in known]
        return rows

    def list_models(self) -> list[ModelDescription | IndexEntry]:
        """Each model known to the server: its latest version described when it serves, else its
        index row (state and reason)."""
        listed: list[ModelDescription | IndexEntry] = []
        for entry in self._repository.entries():
            if entry.versions:
                listed.append(self.describe_version(entry.versions[max(entry.versions)]))
            else:
                listed.append(IndexEntry(entry.name, "", entry.state.protocol_state, entry.reason))
        return listed

    # -- inference ------------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        declared: Mapping[str, str],
        requested: list[str],
        deadline: float | None,
    ) -> InferResult:
        """Validate a request off the wire and run it through its model's batching scheduler."""
        self._refuse_when_draining()
        model = self._repository.get(name, version)
        try:
            batch_size = check_inputs(model.config, name, inputs, declared)
            wanted = check_requested_outputs(model.config, name, requested)
            outputs = await self._schedule(model, dict(inputs), batch_size, deadline)
        except BaseException as exc:
            _name_model(exc, model)
            raise
        chosen = {output: outputs[output] for output in wanted}
        from_graph_shapes(model.config, chosen)
        return InferResult(model, chosen)

    @contextlib.asynccontextmanager
    async def hold(self, name: str, version: str = "") -> AsyncIterator[ModelVersion]:
        """Resolve a model version once and keep it served to this caller until the block ends,
        even if a reload or unload replaces it meanwhile; errors raised inside name it."""
        self._refuse_when_draining()
        async with self._repository.hold(name, version) as model:
            try:
                yield model
            except BaseException as exc:
                _name_model(exc, model)
                raise

    async def run(self, model: ModelVersion, inputs: dict[str, np.ndarray],
                  deadline: float | None) -> dict[str, np.ndarray]:
        """Run inputs built from `model`'s own config (a trusted caller holding it): every output,
        in the declared shapes. Nothing is validated."""
        self._refuse_when_draining()
        batch_size = len(next(iter(inputs.values()))) if model.config.max_batch_size else 1
        outputs = await self._schedule(model, inputs, batch_size, deadline)
        from_graph_shapes(model.config, outputs)
        return outputs

    def _refuse_when_draining(self) -> None:
        if self._draining:
            raise Unavailable(DRAINING_MESSAGE)

    async def _schedule(self, model: ModelVersion, inputs: dict[str, np.ndarray],
                        batch_size: int, deadline: float | None) -> dict[str, np.ndarray]:
        to_runtime_strings(inputs)
        to_graph_shapes(model.config, inputs, batch_size)
        started = time.perf_counter()
        inflight = self._inflight.get(model.name)
        if inflight is None:
            inflight = self._inflight[model.name] = self._metrics.inflight.labels(model.name)
        inflight.inc()
        try:
            outputs = await model.scheduler.infer(inputs, batch_size, deadline)
        except BaseException:
            model.stats.fail.add(time.perf_counter() - started)
            raise
        finally:
            inflight.dec()
        model.stats.success.add(time.perf_counter() - started)
        from_runtime_strings(outputs)
        return outputs


def _name_model(exc: BaseException, model: ModelVersion) -> None:
    exc.model, exc.version = model.name, model.version_label
