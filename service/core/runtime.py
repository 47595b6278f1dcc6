"""ONNX Runtime sessions: execution provider choice, signature check, warm-up and runs."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.config import ModelConfig
from service.core.datatypes import BY_ORT, DATATYPES
from service.errors import ModelLoadError, StartupError

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


class OnnxModel:
    """`instance_count` sessions over one ONNX file; `run(i, ...)` uses instance i."""

    def __init__(
        self, source: Path | bytes, config: ModelConfig, choice: ProviderChoice,
        options: RuntimeOptions, where: str = "",
    ):
        """`source` is the ONNX file, or its bytes (a model sent in a load request); `where`
        names it in errors."""
        path = where or str(source)
        if isinstance(source, Path):
            if not source.is_file():
                raise ModelLoadError(f"{path}: model file not found")
            source = str(source)
        if config.instance_kind == "cpu":
            choice = ProviderChoice(CPU, "instance_kind cpu")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = options.intra_op_threads
        opts.inter_op_num_threads = options.inter_op_threads
        opts.graph_optimization_level = _GRAPH_LEVELS[options.graph_optimization]
        opts.log_severity_level = 3  # warnings from ORT about unused initialisers etc. are noise
        try:
            self._sessions = [
                ort.InferenceSession(source, sess_options=opts, providers=choice.providers)
                for _ in range(config.instance_count)
            ]
        except Exception as exc:  # ORT raises its own exception types for corrupt graphs
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {exc}") from None
        self.provider = self._sessions[0].get_providers()[0]
        self._use_io_binding = self.provider == CUDA
        self.output_names = [spec.name for spec in config.outputs]
        _check_signature(self._sessions[0], config, path)

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; returns outputs in config order. Called from a worker thread."""
        session = self._sessions[instance]
        if not self._use_io_binding:
            return session.run(self.output_names, inputs)
        # On CUDA, bind outputs to host memory so each result is copied device->host exactly once.
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return [value.numpy() for value in binding.get_outputs()]

    def timed_run(self, instance: int, inputs: dict[str, np.ndarray]) -> tuple[list, float]:
        """`run`, and how long it took: called in the worker thread, so the time is the
        runtime's alone, without the thread hand-off around it."""
        started = time.perf_counter()
        outputs = self.run(instance, inputs)
        return outputs, time.perf_counter() - started

    def warm_up(self, config: ModelConfig) -> None:
        """Run every instance at batch 1 and every preferred batch size, so the first real request
        does not pay for lazy initialisation."""
        sizes = sorted({1, *config.dynamic_batching.preferred_batch_sizes})
        if config.max_batch_size == 0:
            sizes = [0]
        for size in sizes:
            inputs = {
                spec.name: np.zeros(
                    ([size] if size else [])
                    + [d if d > 0 else WARMUP_VARIABLE_DIM for d in spec.graph_shape],
                    dtype=DATATYPES[spec.datatype].numpy,
                )
                for spec in config.inputs
            }
            for instance in range(len(self._sessions)):
                self.run(instance, inputs)


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
