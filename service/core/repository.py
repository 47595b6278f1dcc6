"""The model repository: discovery, load, reload and unload of model versions at run time.

Layout: `<root>/<name>/config.yaml` and `<root>/<name>/<version>/<model_filename>`, versions being
positive integers. A (re)load builds and warms every selected version before it replaces what was
served, so requests never see a half-loaded model; replaced versions finish their queued requests
before their sessions are released.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from service.core.batcher import BatchScheduler
from service.core.config import CONFIG_FILENAME, ModelConfig, load_model_config
from service.core.runtime import OnnxModel, ProviderChoice, RuntimeOptions
from service.core.stats import VersionStats
from service.errors import InvalidArgument, ModelLoadError, NotFound, Unavailable
from service.metrics import Metrics

log = logging.getLogger(__name__)

# Model names become directory names: no separators, no leading dot, so no escape from the root.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ModelState(str, enum.Enum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: int
    config: ModelConfig
    runtime: OnnxModel
    scheduler: BatchScheduler
    stats: VersionStats

    @property
    def version_label(self) -> str:
        return str(self.version)


@dataclass(eq=False)
class ModelEntry:
    name: str
    state: ModelState
    reason: str = ""
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def validate_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name or "") or ".." in name:
        raise InvalidArgument(
            f"model name must match {_MODEL_NAME.pattern} (letters, digits, '_', '.', '-'), "
            f"got {name!r}"
        )
    return name


class ModelRepository:
    def __init__(
        self, root: Path, choice: ProviderChoice, options: RuntimeOptions, metrics: Metrics
    ):
        self.root = root.resolve()
        self._choice = choice
        self._options = options
        self._metrics = metrics
        self._models: dict[str, ModelEntry] = {}

    # -- discovery ------------------------------------------------------------------------------

    def available_names(self) -> list[str]:
        """Model directories in the repository, loaded or not."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if (p / CONFIG_FILENAME).is_file() and _MODEL_NAME.match(p.name)
        )

    def _model_dir(self, name: str) -> Path:
        path = (self.root / validate_model_name(name)).resolve()
        if path.parent != self.root:
            raise InvalidArgument(f"model name {name!r} escapes the repository")
        return path

    # -- load / unload ----------------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Load a model, or reload it with the versions and config now on disk."""
        model_dir = self._model_dir(name)
        if not (model_dir / CONFIG_FILENAME).is_file():
            raise NotFound(
                f"model '{name}' not found in repository {self.root} "
                f"(no {name}/{CONFIG_FILENAME})"
            )
        entry = self._models.setdefault(name, ModelEntry(name, ModelState.LOADING))
        async with entry.lock:
            if not entry.versions:
                entry.state = ModelState.LOADING
            new_versions: dict[int, ModelVersion] = {}
            try:
                config = load_model_config(model_dir / CONFIG_FILENAME)
                numbers = self._select_versions(model_dir, config)
                for number in numbers:
                    new_versions[number] = await self._load_version(
                        name, number, model_dir, config
                    )
            except ModelLoadError as exc:
                log.error("model load failed: %s", exc.message)
                if not entry.versions:
                    entry.state, entry.reason = ModelState.UNAVAILABLE, exc.message
                for version in new_versions.values():
                    await self._retire(version)
                raise
            old = entry.versions
            entry.config, entry.versions = config, new_versions
            entry.state, entry.reason = ModelState.READY, ""
            for version in new_versions.values():
                self._metrics.model_ready.labels(name, version.version_label).set(1)
                self._metrics.execution_provider.labels(
                    name, version.version_label, version.runtime.provider
                ).set(1)
            log.info(
                "model ready: name=%s versions=%s provider=%s",
                name, sorted(new_versions), next(iter(new_versions.values())).runtime.provider,
            )
            for version in old.values():
                await self._retire(version, keep_metrics=version.version in new_versions)

    async def unload(self, name: str) -> None:
        entry = self._models.get(validate_model_name(name))
        if entry is None:
            raise NotFound(f"model '{name}' is not loaded")
        async with entry.lock:
            entry.state = ModelState.UNLOADING
            old, entry.versions = entry.versions, {}
            for version in old.values():
                await self._retire(version)
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"
            log.info("model unloaded: name=%s", name)

    async def close(self) -> None:
        for entry in list(self._models.values()):
            for version in list(entry.versions.values()):
                await self._retire(version)
            entry.versions = {}

    def _select_versions(self, model_dir: Path, config: ModelConfig) -> list[int]:
        on_disk = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if not on_disk:
            raise ModelLoadError(f"{model_dir}: no version directories (expected e.g. {model_dir}/1/)")
        selected = config.version_policy.select([v for v in on_disk if v > 0])
        if not selected:
            raise ModelLoadError(
                f"{model_dir / CONFIG_FILENAME}: field 'version_policy' selects none of the "
                f"versions on disk {sorted(on_disk)}"
            )
        return selected

    async def _load_version(
        self, name: str, number: int, model_dir: Path, config: ModelConfig
    ) -> ModelVersion:
        path = model_dir / str(number) / config.model_filename

        def build() -> OnnxModel:
            runtime = OnnxModel(path, config, self._choice, self._options)
            try:
                runtime.warm_up(config)
            except Exception as exc:
                raise ModelLoadError(f"{path}: warm-up run failed: {exc}") from None
            return runtime

        # Sessions are built in a thread: loading a large model must not stall serving.
        runtime = await asyncio.to_thread(build)
        stats = VersionStats()
        scheduler = BatchScheduler(name, str(number), config, runtime, self._metrics, stats)
        return ModelVersion(name, number, config, runtime, scheduler, stats)

    async def _retire(self, version: ModelVersion, keep_metrics: bool = False) -> None:
        await version.scheduler.close()
        if not keep_metrics:
            self._metrics.forget_version(
                version.name, version.version_label, version.runtime.provider
            )

    # -- lookup ---------------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the named one, or the highest loaded."""
        entry = self._models.get(name)
        if entry is None or (not entry.versions and entry.state is ModelState.UNAVAILABLE
                             and entry.reason == "unloaded"):
            raise NotFound(f"model '{name}' is not loaded; loaded models: {self.ready_names()}")
        if not entry.versions:
            detail = f": {entry.reason}" if entry.reason else ""
            raise Unavailable(f"model '{name}' is not ready ({entry.state.value}){detail}")
        if not version:
            return entry.versions[max(entry.versions)]
        if not version.isdigit():
            raise InvalidArgument(f"model version must be a positive integer, got {version!r}")
        found = entry.versions.get(int(version))
        if found is None:
            raise NotFound(
                f"model '{name}' version {version} is not loaded; loaded versions: "
                f"{sorted(entry.versions)}"
            )
        return found

    def ready_names(self) -> list[str]:
        return sorted(name for name, e in self._models.items() if e.versions)

    def entries(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def loaded_versions(self, name: str = "") -> list[ModelVersion]:
        entries = [self._models[name]] if name else self.entries()
        return [e.versions[v] for e in entries for v in sorted(e.versions)]
