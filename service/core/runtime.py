"""ONNX Runtime sessions: execution provider and its options, signature check, warm-up and runs.

On CUDA every run goes through IO binding, inputs bound from host memory and outputs to host
memory, so ONNX Runtime copies each input to the device once and each output back once, into host
buffers it allocates and whose numpy views are returned. With `enable_cuda_graph`, each warmed-up
input shape instead has device buffers of its own, bound once, with a CUDA graph captured over
them: a run copies the inputs into those buffers, replays the graph and copies the outputs back,
still once each way. A graph needs fixed shapes and fixed buffer addresses, so only the shapes
warm-up ran get one (preferred batch sizes, super-resolution tile runs); any other shape runs
normally in the same session.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.config import CudaOptions, ModelConfig, TaskKind
from service.core.datatypes import BY_ORT, DATATYPES
from service.errors import ModelLoadError, ModelSkipped, StartupError
from service.tasks.tiling import WARMUP_IMAGE_SIZES, tile_runs

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# Variable non-batch dims (e.g. image height/width) get this size during warm-up.
WARMUP_VARIABLE_DIM = 16
# Runs per shape when a CUDA graph is captured for it: ONNX Runtime's CUDA provider captures a
# graph id's graph only after regular runs of it (min_num_runs_before_cuda_graph_capture_, 1 or
# 2 depending on the version), then replays it.
CUDA_GRAPH_WARMUP_RUNS = 3
# What ONNX Runtime's session creation says when a model cannot be captured as a CUDA graph.
GRAPH_REFUSED = "cannot use the graph capture feature"


@dataclass(frozen=True)
class ProviderChoice:
    """The execution provider this process uses, decided once at start."""

    provider: str
    reason: str

    @property
    def providers(self) -> list[str]:
        return [CUDA, CPU] if self.provider == CUDA else [CPU]


def _cuda_usable() -> tuple[bool, str, str]:
    """(usable, why, what ONNX Runtime's library preloading printed)."""
    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider", ""
    # The CUDA provider needs the CUDA runtime, cuBLAS and cuDNN libraries plus a device. Probe them
    # here so that a CPU-only host gets one clear log line instead of a session-creation error.
    # preload_dlls finds the nvidia-* pip packages when they are installed; it prints a line per
    # library it misses, which on a CPU-only host is noise before our own line: keep it apart.
    printed = io.StringIO()
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(printed):
            try:
                preload(directory="")
            except Exception:  # noqa: BLE001 - absence is the common case and is handled below
                pass
    for lib in ("libcudart.so.13", "libcublas.so.13", "libcudnn.so.9"):
        try:
            ctypes.CDLL(lib)
        except OSError:
            return False, f"{lib} not found", printed.getvalue()
    try:
        cudart = ctypes.CDLL("libcudart.so.13")
        count = ctypes.c_int(0)
        if cudart.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value < 1:
            return False, "no CUDA device visible", printed.getvalue()
    except OSError as exc:
        return False, f"CUDA runtime unusable: {exc}", printed.getvalue()
    return True, f"{count.value} CUDA device(s) found", printed.getvalue()


def choose_provider(device: str) -> ProviderChoice:
    """Pick CUDA only when it is really usable; `device` is auto, cpu or cuda."""
    if device == "cpu":
        return ProviderChoice(CPU, "CPU requested")
    usable, reason, printed = _cuda_usable()
    if usable:
        return ProviderChoice(CUDA, reason)
    if printed.strip():
        log.debug("ONNX Runtime's CUDA library preloading said: %s", printed.strip())
    if device == "cuda":
        detail = "; ".join(line for line in printed.strip().splitlines() if line)
        raise StartupError(f"device 'cuda' requested but CUDA is not usable: {reason}"
                           + (f" ({detail})" if detail else ""))
    return ProviderChoice(CPU, f"CUDA not used: {reason}")


@dataclass(frozen=True)
class RuntimeOptions:
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    cuda: CudaOptions = field(default_factory=CudaOptions)
    """Server-wide CUDA provider options; a field left None is not passed (ORT's default)."""
    sr_tile_size: int = 128
    """The task API's super-resolution tiling, whose tile runs warm-up covers."""
    sr_tile_overlap: int = 16


def resolve_cuda_options(defaults: CudaOptions, model: CudaOptions | None) -> CudaOptions:
    """The server's CUDA options with the fields a model's config sets replacing them."""
    if model is None:
        return defaults
    return defaults.model_copy(update=model.model_dump(exclude_none=True))


def cuda_provider_options(options: CudaOptions) -> dict[str, str]:
    """ONNX Runtime's CUDA provider options (name -> string) for `options`; None is left out."""
    values = options.model_dump(exclude_none=True)
    if values.get("gpu_mem_limit") == 0:
        del values["gpu_mem_limit"]  # 0 is our "no limit", which is ORT's default (SIZE_MAX)
    return {name: (str(int(v)) if isinstance(v, bool) else str(v)) for name, v in values.items()}


@dataclass(frozen=True)
class WarmupRun:
    inputs: dict[str, np.ndarray]
    fixed_shape: bool
    """A shape real traffic runs as is (a preferred batch of a model with fixed dims, or a tile
    run), so worth a CUDA graph; False for placeholder dims of variable-size inputs."""


def warmup_runs(config: ModelConfig, options: RuntimeOptions,
                tune_per_shape: bool) -> list[WarmupRun]:
    """What warm-up runs: batch 1 and every preferred batch size; for super-resolution models the
    tile runs an upscale of each of WARMUP_IMAGE_SIZES makes instead (window shapes and the batch
    sizes the tiler sends). `tune_per_shape`: the provider tunes per input shape (cuDNN picks an
    algorithm per shape, a CUDA graph is per shape), so every tile batch size is run; the CPU
    provider keeps nothing per shape, so one batch per window shape is enough there."""
    image = config.inputs[0].graph_shape
    if (config.task.kind is TaskKind.SUPER_RESOLUTION and config.max_batch_size > 0
            and len(config.inputs) == 1 and len(image) == 3 and image[1:] == [-1, -1]):
        shapes = set().union(*(
            tile_runs(width, height, options.sr_tile_size, options.sr_tile_overlap,
                      config.max_batch_size)
            for width, height in WARMUP_IMAGE_SIZES))
        if not tune_per_shape:
            shapes = {(1, h, w) for _, h, w in shapes}
        spec = config.inputs[0]
        return [WarmupRun({spec.name: warmup_array((batch, image[0], h, w), spec.datatype)},
                          True)
                for batch, h, w in sorted(shapes)]
    sizes = sorted({1, *config.dynamic_batching.preferred_batch_sizes})
    if config.max_batch_size == 0:
        sizes = [0]
    fixed = all(-1 not in spec.graph_shape for spec in config.inputs)
    return [
        WarmupRun({
            spec.name: warmup_array(([size] if size else [])
                                    + [d if d > 0 else WARMUP_VARIABLE_DIM
                                       for d in spec.graph_shape], spec.datatype)
            for spec in config.inputs
        }, fixed)
        for size in sizes
    ]


def warmup_array(shape, datatype: str) -> np.ndarray:
    """Zeros; for BYTES, the text "0" (which a graph that parses numbers accepts, as any other
    takes text)."""
    if datatype == "BYTES":
        return np.full(shape, "0", dtype=object)
    return np.zeros(shape, DATATYPES[datatype].numpy)


def run_host_bound(session: ort.InferenceSession, inputs: dict[str, np.ndarray],
                   output_names: list[str], run_options: ort.RunOptions | None = None,
                   ) -> list[np.ndarray]:
    """One run with inputs bound from host memory and outputs bound to host memory: ONNX Runtime
    copies each input to the session's device and each output back to a host buffer of its own;
    the arrays returned are views of those buffers (each keeps its buffer alive)."""
    binding = session.io_binding()
    # Bound inputs must outlive the run: keep the contiguous arrays referenced until it returns.
    arrays = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
    for name, array in arrays.items():
        binding.bind_cpu_input(name, array)
    for name in output_names:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding, run_options)
    return [value.numpy() for value in binding.get_outputs()]


def _shape_key(inputs: dict[str, np.ndarray]) -> tuple:
    return tuple(sorted((name, array.shape) for name, array in inputs.items()))


@dataclass
class _GraphSlot:
    binding: ort.IOBinding
    inputs: dict[str, ort.OrtValue]
    outputs: list[ort.OrtValue]
    run_options: ort.RunOptions


class FixedShapeBuffers:
    """One instance's buffers for CUDA graphs: per input shape added, device tensors for every
    input and output bound once (a captured graph replays on fixed addresses) and a graph id of
    its own. `device` is "cuda" in the server; "cpu" runs the same code on the CPU provider."""

    def __init__(self, session: ort.InferenceSession, output_names: list[str],
                 device: str = "cuda"):
        self._session = session
        self._output_names = output_names
        self._device = device
        self._slots: dict[tuple, _GraphSlot] = {}
        # Every run of a graph-enabled session that is not one of ours must say so: a run without
        # a graph id uses id 0, whose graph ONNX Runtime would capture and then replay for every
        # later id-0 run whatever its inputs.
        self.no_graph = ort.RunOptions()
        self.no_graph.add_run_config_entry("gpu_graph_id", "-1")

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, inputs: dict[str, np.ndarray]) -> None:
        """Give `inputs`' shape its buffers; the output shapes come from one ordinary run."""
        key = _shape_key(inputs)
        if key in self._slots:
            return
        outputs = run_host_bound(self._session, inputs, self._output_names, self.no_graph)
        binding = self._session.io_binding()
        bound_inputs = {}
        for name, array in inputs.items():
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                array.shape, array.dtype, self._device, 0)
            binding.bind_ortvalue_input(name, value)
            bound_inputs[name] = value
        bound_outputs = []
        for name, array in zip(self._output_names, outputs):
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                array.shape, array.dtype, self._device, 0)
            binding.bind_ortvalue_output(name, value)
            bound_outputs.append(value)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(len(self._slots) + 1))
        self._slots[key] = _GraphSlot(binding, bound_inputs, bound_outputs, run_options)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """Run on the buffers of `inputs`' shape; None when that shape has none."""
        slot = self._slots.get(_shape_key(inputs))
        if slot is None:
            return None
        for name, array in inputs.items():
            slot.inputs[name].update_inplace(np.ascontiguousarray(array))
        slot.binding.synchronize_inputs()
        self._session.run_with_iobinding(slot.binding, slot.run_options)
        slot.binding.synchronize_outputs()
        # A device tensor's numpy() is a fresh host copy; a CPU one's is a view of the buffer the
        # next run overwrites, so copy it.
        if self._device == "cpu":
            return [value.numpy().copy() for value in slot.outputs]
        return [value.numpy() for value in slot.outputs]


class OnnxModel:
    """`instance_count` sessions over one ONNX file; `run(i, ...)` uses instance i."""

    def __init__(
        self, source: Path | bytes, config: ModelConfig, choice: ProviderChoice,
        options: RuntimeOptions, where: str = "",
    ):
        """`source` is the ONNX file, or its bytes (a model sent in a load request); `where`
        names it in errors."""
        path = where or str(source)
        if config.instance_kind == "gpu" and choice.provider != CUDA:
            raise ModelSkipped(f"{path}: instance_kind gpu needs the CUDA provider; this server "
                               f"runs on {choice.provider} ({choice.reason})")
        if isinstance(source, Path):
            if not source.is_file():
                raise ModelLoadError(f"{path}: model file not found")
            source = str(source)
        if config.instance_kind == "cpu":
            choice = ProviderChoice(CPU, "instance_kind cpu")
        self.cuda_options = resolve_cuda_options(options.cuda, config.cuda)
        providers: list = choice.providers
        self.provider_options: dict[str, str] = {}
        if choice.provider == CUDA:
            self.provider_options = cuda_provider_options(self.cuda_options)
            providers = [(CUDA, self.provider_options), CPU]
        elif config.cuda is not None:
            log.info("%s: cuda options %s are valid but not used on %s", path,
                     config.cuda.model_dump(exclude_none=True), choice.provider)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = options.intra_op_threads
        opts.inter_op_num_threads = options.inter_op_threads
        opts.graph_optimization_level = _GRAPH_LEVELS[options.graph_optimization]
        opts.log_severity_level = 3  # warnings from ORT about unused initialisers etc. are noise
        try:
            self._sessions = self._open(source, opts, providers, config.instance_count, path)
        except Exception as exc:  # ORT raises its own exception types for corrupt graphs
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {exc}") from None
        self.provider = self._sessions[0].get_providers()[0]
        if config.instance_kind == "gpu" and self.provider != CUDA:
            raise ModelLoadError(f"{path}: instance_kind gpu, but ONNX Runtime put the session "
                                 f"on {self.provider}")
        self.output_names = [spec.name for spec in config.outputs]
        _check_signature(self._sessions[0], config, path)
        # IO binding binds numeric buffers only; a model with string tensors runs unbound.
        self._host_bound = self.provider == CUDA and all(
            DATATYPES[spec.datatype].fixed_size for spec in config.inputs + config.outputs)
        self._graphs: list[FixedShapeBuffers] | None = None
        if self._host_bound and self.cuda_options.enable_cuda_graph:
            self._graphs = [FixedShapeBuffers(s, self.output_names) for s in self._sessions]
        self.warmup_runs = warmup_runs(config, options, tune_per_shape=self.provider == CUDA)

    def _open(self, source, opts: ort.SessionOptions, providers: list, count: int,
              path: str) -> list[ort.InferenceSession]:
        try:
            return [ort.InferenceSession(source, sess_options=opts, providers=providers)
                    for _ in range(count)]
        except Exception as exc:
            # A graph needs every node on the CUDA provider; shape computations that ONNX Runtime
            # keeps on the CPU rule it out. The model still runs, without graphs.
            if not self.cuda_options.enable_cuda_graph or GRAPH_REFUSED not in str(exc):
                raise
            refused = str(exc)
        log.warning("%s: CUDA graphs are not possible for this model, so it runs without: %s",
                    path, refused)
        self.cuda_options = self.cuda_options.model_copy(update={"enable_cuda_graph": False})
        self.provider_options = cuda_provider_options(self.cuda_options)
        return self._open(source, opts, [(CUDA, self.provider_options), CPU], count, path)

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; returns outputs in config order. Called from a worker thread."""
        session = self._sessions[instance]
        if not self._host_bound:
            return session.run(self.output_names, inputs)
        if self._graphs is None:
            return run_host_bound(session, inputs, self.output_names)
        graphs = self._graphs[instance]
        outputs = graphs.run(inputs)
        if outputs is None:
            outputs = run_host_bound(session, inputs, self.output_names, graphs.no_graph)
        return outputs

    def timed_run(self, instance: int, inputs: dict[str, np.ndarray]) -> tuple[list, float]:
        """`run`, and how long it took: called in the worker thread, so the time is the
        runtime's alone, without the thread hand-off around it."""
        started = time.perf_counter()
        outputs = self.run(instance, inputs)
        return outputs, time.perf_counter() - started

    @property
    def cuda_graphs(self) -> int:
        """CUDA graphs captured per instance (0 unless enable_cuda_graph on CUDA)."""
        return len(self._graphs[0]) if self._graphs else 0

    def warm_up(self, instance: int) -> None:
        """Run `warmup_runs` on one instance, so that the first real request of each shape does
        not pay for lazy initialisation, algorithm search or graph capture. Call it on the thread
        that serves the instance: the CUDA provider keeps cuBLAS and cuDNN handles and captured
        graphs per thread, so warming another thread would leave the serving one cold."""
        graphs = self._graphs[instance] if self._graphs else None
        for run in self.warmup_runs:
            repeats = 1
            if graphs is not None and run.fixed_shape:
                graphs.add(run.inputs)
                repeats = CUDA_GRAPH_WARMUP_RUNS
            for _ in range(repeats):
                self.run(instance, run.inputs)


def _check_signature(session: ort.InferenceSession, config: ModelConfig, path: str) -> None:
    """The config must describe the graph: names, dtypes and every fixed dim."""
    batch_axes = 1 if config.max_batch_size > 0 else 0
    for group, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        by_name = {node.name: node for node in actual}
        declared = getattr(config, group)
        undeclared = sorted(set(by_name) - {s.name for s in declared})
        if group == "inputs" and undeclared:
            raise ModelLoadError(f"{path}: graph input(s) {undeclared} are not in the config")
        for index, spec in enumerate(declared):
            node = by_name.get(spec.name)
            where = f"{path}: config field '{group}.{index}'"
            if node is None:
                raise ModelLoadError(
                    f"{where}: tensor '{spec.name}' is not in the graph; it has {sorted(by_name)}"
                )
            row = BY_ORT.get(node.type)
            datatype = row.name if row else node.type
            if datatype != spec.datatype:
                raise ModelLoadError(
                    f"{where}: datatype {spec.datatype} but the graph says {datatype}"
                )
            graph_dims = list(node.shape)[batch_axes:]
            want_dims = spec.graph_shape
            label = "reshape" if spec.reshape is not None else "shape"
            if len(graph_dims) != len(want_dims) or any(
                isinstance(have, int) and want != -1 and want != have
                for want, have in zip(want_dims, graph_dims)
            ):
                raise ModelLoadError(
                    f"{where}: {label} {want_dims} (batch axis "
                    f"{'implicit' if batch_axes else 'none'}) but the graph's is {list(node.shape)}"
                )
