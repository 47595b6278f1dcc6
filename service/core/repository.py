"""The model repository: discovery, load, reload and unload of model versions at run time.

Layout: `<root>/<name>/config.yaml` and `<root>/<name>/<version>/<model_filename>`, versions being
positive integers. A (re)load builds and warms every selected version before it replaces what was
served, so requests never see a half-loaded model; replaced versions finish their queued requests
before their sessions are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from service.core.batcher import BatchScheduler
from service._proto import model_config_pb2 as mc
from service.core import triton_config
from service.core.config import CONFIG_FILENAME, ModelConfig, VersionPolicy, load_model_config
from service.core.runtime import OnnxModel, ProviderChoice, RuntimeOptions
from service.core.stats import VersionStats
from service.core.triton_config import PBTXT_FILENAME
from service.errors import (
    InvalidArgument, ModelLoadError, ModelSkipped, NotFound, StartupError, Unavailable,
)
from service.metrics import Metrics

log = logging.getLogger(__name__)

# Model names become directory names: no separators, no leading dot, so no escape from the root.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Versions are ASCII digits (str.isdigit would let '²' through to int()).
_VERSION = re.compile(r"^[0-9]{1,9}$")


class ModelState(str, enum.Enum):
    """Where a model is in its life. The protocols know Triton's four states, in which an
    unloaded model is UNAVAILABLE with reason "unloaded" (`protocol_state`)."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"      # its last load failed and no version serves; `reason` says why
    UNLOADED = "UNLOADED"  # unloaded on request

    @property
    def protocol_state(self) -> str:
        return "UNAVAILABLE" if self in (ModelState.FAILED, ModelState.UNLOADED) else self.value


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: int
    config: ModelConfig
    runtime: OnnxModel
    scheduler: BatchScheduler
    stats: VersionStats
    # Calls that hold this version for their whole length (a streamed upscale); a replaced
    # version is closed only once the last of them lets go.
    holds: int = 0
    retired: bool = False
    keep_metrics: bool = False  # retired by a reload that serves the same version number again

    @property
    def version_label(self) -> str:
        return str(self.version)


@dataclass(eq=False)
class ModelEntry:
    name: str
    state: ModelState
    reason: str = ""
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


# A version sent in a load request: `<version>/<file name>`, nothing else.
_OVERRIDE_FILE = re.compile(r"^([1-9][0-9]{0,8})/([A-Za-z0-9_.-]+)$")


@dataclass(frozen=True)
class LoadOverride:
    """What a load request may carry (as tritonclient's load_model sends it): a JSON ModelConfig
    replacing the model's config, and model files keyed `<version>/<file name>`, kept in memory
    and never written to the repository."""

    config_json: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_parameters(cls, parameters: dict[str, object], max_file_bytes: int
                        ) -> LoadOverride | None:
        """A load request's parameters, as every protocol receives them once decoded: 'config'
        (a JSON string) and 'file:<version>/<file name>' (bytes). None when there are none."""
        if not parameters:
            return None
        config_json, files, total = None, {}, 0
        for key, value in parameters.items():
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidArgument("parameter 'config': expected a JSON string")
                config_json = value
            elif key.startswith("file:"):
                if not isinstance(value, bytes):
                    raise InvalidArgument(f"parameter '{key}': expected the file's bytes")
                files[key[len("file:"):]] = value
                total += len(value)
            else:
                raise InvalidArgument(
                    f"RepositoryModelLoad: unknown parameter '{key}'; expected 'config' and "
                    "'file:<version>/<file name>'"
                )
        if files and config_json is None:
            raise InvalidArgument("RepositoryModelLoad: files need a 'config' parameter too")
        if total > max_file_bytes:
            raise InvalidArgument(
                f"RepositoryModelLoad: files total {total} bytes; the limit is "
                f"{max_file_bytes} (max_load_file_bytes)"
            )
        return cls(config_json, files)

    def version_files(self, filename: str, policy: VersionPolicy) -> dict[int, bytes]:
        versions = {}
        for key, data in self.files.items():
            match = _OVERRIDE_FILE.match(key)
            if not match or match.group(2) != filename or ".." in key:
                raise ModelLoadError(
                    f"parameter 'file:{key}': expected 'file:<version>/{filename}'"
                )
            versions[int(match.group(1))] = data
        selected = policy.select(list(versions))
        return {v: versions[v] for v in selected}


def _looks_like_model(path: Path) -> bool:
    if (path / CONFIG_FILENAME).is_file() or (path / PBTXT_FILENAME).is_file():
        return True
    return path.is_dir() and any(
        v.is_dir() and _VERSION.match(v.name) and any(v.glob("*.onnx")) for v in path.iterdir()
    )


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

    def check_root(self) -> None:
        """At start: a missing or unreadable repository directory stops the server (serving
        nothing while reporting healthy would hide the mistake); an empty one is a warning."""
        if not self.root.exists():
            raise StartupError(f"model repository {self.root} does not exist")
        if not self.root.is_dir():
            raise StartupError(f"model repository {self.root} is not a directory")
        try:
            next(self.root.iterdir(), None)
        except OSError as exc:
            raise StartupError(f"model repository {self.root} cannot be read: "
                               f"{exc.strerror}") from exc
        if not self.available_names():
            log.warning("model repository %s has no models; load them with "
                        "RepositoryModelLoad once they are there", self.root)

    def available_names(self) -> list[str]:
        """Model directories in the repository, loaded or not: those with a config.yaml or a
        config.pbtxt, or (Triton-style, config completed from the graph) a version with a model."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if _MODEL_NAME.match(p.name) and _looks_like_model(p))

    def _model_dir(self, name: str) -> Path:
        # The validated name has no separators and no '..'; resolving also refuses a symlink
        # that leads out of the repository.
        path = (self.root / validate_model_name(name)).resolve()
        if path.parent != self.root:
            raise InvalidArgument(f"model name {name!r} escapes the repository")
        return path

    # -- load / unload ----------------------------------------------------------------------------

    async def load(self, name: str, override: LoadOverride | None = None) -> None:
        """Load a model, or reload it with the versions and config now on disk; `override`
        replaces the config (and optionally the files) for this load only."""
        model_dir = self._model_dir(name)
        if override is None and not _looks_like_model(model_dir):
            raise NotFound(
                f"model '{name}' not found in repository {self.root} (no {name}/{CONFIG_FILENAME}"
                f", {name}/{PBTXT_FILENAME} or {name}/<version>/model.onnx)"
            )
        entry = self._models.setdefault(name, ModelEntry(name, ModelState.LOADING))
        async with entry.lock:
            if not entry.versions:
                entry.state = ModelState.LOADING
            new_versions: dict[int, ModelVersion] = {}
            try:
                # Reading a Triton config may open the graph to complete it: not on the loop.
                config, sources = await asyncio.to_thread(
                    self._resolve, name, model_dir, override)
                for number, source in sources.items():
                    new_versions[number] = await self._load_version(name, number, source, config)
            except ModelLoadError as exc:
                skipped = isinstance(exc, ModelSkipped)
                if not skipped:  # a skipped model is logged once, by whoever asked for it
                    log.error("model load failed: %s", exc.message)
                if not entry.versions:
                    entry.state, entry.reason = ModelState.FAILED, exc.message
                    if not skipped:
                        # No version serves it: say so (version "") so the not-ready alert fires.
                        self._metrics.model_ready.labels(name, "").set(0)
                for version in new_versions.values():
                    await self._retire(version)
                if override is not None and not skipped:
                    raise InvalidArgument(exc.message) from None  # the request's own content
                raise
            old = entry.versions
            entry.versions = new_versions
            entry.state, entry.reason = ModelState.READY, ""
            self._metrics.forget_failed_load(name)
            for version in new_versions.values():
                self._metrics.model_ready.labels(name, version.version_label).set(1)
                self._metrics.execution_provider.labels(
                    name, version.version_label, version.runtime.provider
                ).set(1)
            runtime = next(iter(new_versions.values())).runtime
            log.info(
                "model ready: name=%s versions=%s provider=%s warm_up_runs=%d cuda_graphs=%d%s",
                name, sorted(new_versions), runtime.provider, len(runtime.warmup_runs),
                runtime.cuda_graphs,
                f" cuda_options={runtime.provider_options}" if runtime.provider_options else "",
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
            entry.state, entry.reason = ModelState.UNLOADED, "unloaded"
            log.info("model unloaded: name=%s", name)

    async def close(self) -> None:
        """At shutdown, once calls are over: close every version, held or not."""
        for entry in list(self._models.values()):
            for version in list(entry.versions.values()):
                await self._close(version)
            entry.versions = {}

    def _resolve(
        self, name: str, model_dir: Path, override: LoadOverride | None
    ) -> tuple[ModelConfig, dict[int, Path | bytes]]:
        """The config to load with, and each selected version's model (file or bytes)."""
        if override is not None and override.config_json is not None:
            source = f"load request for '{name}', parameter 'config'"
            triton = triton_config.parse_json(override.config_json, source)
        else:
            native, pbtxt = triton_config.config_files(model_dir)
            if native is not None:
                config = load_model_config(native)
                return config, self._on_disk(model_dir, config.version_policy,
                                             config.model_filename, str(native))
            source = str(pbtxt or model_dir)
            triton = triton_config.parse_pbtxt(pbtxt) if pbtxt else mc.ModelConfig()
        triton_config.check_backend(triton, name, source)
        filename = triton.default_model_filename or "model.onnx"
        policy = VersionPolicy(**triton_config.version_policy(triton))
        if override is not None and override.files:
            sources = override.version_files(filename, policy)
        else:
            sources = self._on_disk(model_dir, policy, filename, source)
        triton_config.autocomplete(triton, name, sources[max(sources)])
        return triton_config.from_triton(triton, name, source, model_dir), sources

    @staticmethod
    def _on_disk(model_dir: Path, policy: VersionPolicy, filename: str,
                 source: str) -> dict[int, Path]:
        on_disk = [int(p.name) for p in model_dir.iterdir()
                   if p.is_dir() and _VERSION.match(p.name)] if model_dir.is_dir() else []
        if not on_disk:
            raise ModelLoadError(f"{model_dir}: no version directories (expected e.g. "
                                 f"{model_dir}/1/{filename})")
        selected = policy.select([v for v in on_disk if v > 0])
        if not selected:
            raise ModelLoadError(
                f"{source}: field 'version_policy' selects none of the versions on disk "
                f"{sorted(on_disk)}"
            )
        return {v: model_dir / str(v) / filename for v in selected}

    async def _load_version(
        self, name: str, number: int, source: Path | bytes, config: ModelConfig
    ) -> ModelVersion:
        where = (str(source) if isinstance(source, Path)
                 else f"{name}/{number}/{config.model_filename} (sent with the load request)")

        # Sessions are built in a thread: loading a large model must not stall serving.
        runtime = await asyncio.to_thread(
            OnnxModel, source, config, self._choice, self._options, where)
        stats = VersionStats()
        scheduler = BatchScheduler(name, str(number), config, runtime, self._metrics, stats)
        version = ModelVersion(name, number, config, runtime, scheduler, stats)
        try:
            await scheduler.warm_up()
        except Exception as exc:
            # The version still being served under this number keeps its metrics.
            await self._retire(version, keep_metrics=number in self._models[name].versions)
            raise ModelLoadError(f"{where}: warm-up run failed: {exc}") from None
        return version

    async def _retire(self, version: ModelVersion, keep_metrics: bool = False) -> None:
        """Close a version that no longer serves new calls: at once, or when its last hold ends."""
        version.retired, version.keep_metrics = True, keep_metrics
        if not version.holds:
            await self._close(version)

    async def _close(self, version: ModelVersion) -> None:
        await version.scheduler.close()
        if not version.keep_metrics:
            self._metrics.forget_version(
                version.name, version.version_label, version.runtime.provider
            )

    @contextlib.asynccontextmanager
    async def hold(self, name: str, version: str = "") -> AsyncIterator[ModelVersion]:
        """The version to serve (as `get`), kept open until the block ends even if a reload or
        unload replaces it meanwhile."""
        found = self.get(name, version)
        found.holds += 1
        try:
            yield found
        finally:
            found.holds -= 1
            if found.retired and not found.holds:
                await self._close(found)

    # -- lookup ---------------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the named one, or the highest loaded."""
        entry = self._models.get(name)
        if entry is None or (not entry.versions and entry.state is ModelState.UNLOADED):
            raise NotFound(f"model '{name}' is not loaded; loaded models: {self.ready_names()}")
        if not entry.versions:
            detail = f": {entry.reason}" if entry.reason else ""
            raise Unavailable(
                f"model '{name}' is not ready ({entry.state.protocol_state}){detail}")
        if not version:
            return entry.versions[max(entry.versions)]
        if not _VERSION.match(version):
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
