"""Triton's model configuration (`config.pbtxt`, the ModelConfig RPC) <-> our native config.

One engine, two ways in: a `config.pbtxt` (or a JSON override sent with a load request) is parsed
with protobuf's text/JSON format against Triton's `ModelConfig` message, completed from the ONNX
file where it is silent (as Triton does with strict config off), and converted to the native
`ModelConfig`. Every native config maps back onto Triton's message for the ModelConfig RPC, task
metadata travelling in `parameters`.

Each Triton field is honoured, accepted and ignored (logged), or refused: see the three tables
below, which are the whole policy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnxruntime as ort
from google.protobuf import json_format, text_format

from service._proto import model_config_pb2 as mc
from service.core.config import CONFIG_FILENAME as NATIVE_FILENAME
from service.core.config import CudaOptions, ModelConfig, TaskMetadata, parse_model_config
from service.core.datatypes import BY_ORT, BY_TRITON, DATATYPES
from service.core.description import ModelDescription, task_parameters
from service.errors import ModelLoadError

log = logging.getLogger(__name__)

PBTXT_FILENAME = "config.pbtxt"
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
# Triton fills max_batch_size with this when the model can batch and the config does not say.
AUTOFILL_MAX_BATCH_SIZE = 4



def _triton_type(datatype: str) -> int:
    return mc.DataType.Value(DATATYPES[datatype].triton)


# ModelConfig fields and what becomes of them.
HONOURED = {
    "name", "platform", "backend", "version_policy", "max_batch_size", "input", "output",
    "dynamic_batching", "instance_group", "default_model_filename", "parameters",
    "optimization",  # its CUDA provider options only; the rest is logged as ignored
}
IGNORED = {  # accepted so Triton repositories load unchanged; each use is logged
    "model_warmup", "response_cache", "metric_tags", "cc_model_filenames",
    "model_operations", "model_repository_agents", "model_metrics", "runtime",
}
REFUSED = {  # features this server does not have: loading would silently change behaviour
    "sequence_batching": "sequence batching", "ensemble_scheduling": "ensembles",
    "batch_input": "batch inputs", "batch_output": "batch outputs",
}
TENSOR_REFUSED = {"is_shape_tensor": "shape tensors", "allow_ragged_batch": "ragged batching",
                  "is_non_linear_format_io": "non-linear formats"}
TASK_KEYS = set(TaskMetadata.model_fields) - {"kind"}
# Triton's ONNX Runtime backend hands the parameters of a gpu_execution_accelerator named "cuda"
# to the CUDA provider as they are (ORT's names and values); those this server has are the
# CudaOptions fields. Its older top-level `parameters` keys take Triton's numeric codes and win
# over the accelerator's, as in the backend.
CUDA_ACCELERATOR = "cuda"
LEGACY_CUDA_PARAMETERS: dict[str, dict[str, str] | None] = {
    "cudnn_conv_algo_search": {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"},
    "gpu_mem_limit": None,
    "arena_extend_strategy": {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"},
    "do_copy_in_default_stream": None,
}


def parse_pbtxt(path: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{path}: not a valid Triton ModelConfig: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read config: {exc.strerror}") from None


def parse_json(text: str, source: str) -> mc.ModelConfig:
    """A JSON ModelConfig, as tritonclient's load_model(config=...) sends it."""
    try:
        return json_format.Parse(text, mc.ModelConfig())
    except json_format.ParseError as exc:
        raise ModelLoadError(f"{source}: not a valid ModelConfig JSON: {exc}") from None


def is_onnx_model(triton: mc.ModelConfig) -> bool:
    return triton.platform in ("", ONNX_PLATFORM) and triton.backend in ("", ONNX_BACKEND)


def check_backend(triton: mc.ModelConfig, model: str, source: str) -> None:
    if not is_onnx_model(triton):
        runs = " / ".join(x for x in (triton.platform, triton.backend) if x)
        raise ModelLoadError(
            f"{source}: model '{model}' is for '{runs}'; this server runs only ONNX models "
            f"(platform '{ONNX_PLATFORM}' or backend '{ONNX_BACKEND}')"
        )


def version_policy(triton: mc.ModelConfig) -> dict:
    choice = triton.version_policy.WhichOneof("policy_choice")
    if choice == "all":
        return {"all": True}
    if choice == "specific":
        return {"specific": list(triton.version_policy.specific.versions)}
    if choice == "latest":
        return {"latest": max(triton.version_policy.latest.num_versions, 1)}
    return {"latest": 1}


def autocomplete(triton: mc.ModelConfig, model: str, onnx: Path | bytes) -> None:
    """Fill what the config leaves out from the ONNX graph, as Triton does with strict config off:
    inputs, outputs, their types and dims, and whether dim 0 is a batch axis."""
    if triton.input and triton.output and triton.max_batch_size:
        return
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            onnx if isinstance(onnx, bytes) else str(onnx), opts,
            providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types for unreadable graphs
        raise ModelLoadError(f"model '{model}': cannot read the ONNX graph to complete its "
                             f"config: {exc}") from None
    nodes = list(session.get_inputs()) + list(session.get_outputs())
    can_batch = all(node.shape and not isinstance(node.shape[0], int) for node in nodes)
    if triton.max_batch_size == 0 and can_batch and not triton.input and not triton.output:
        triton.max_batch_size = AUTOFILL_MAX_BATCH_SIZE
        if triton.WhichOneof("scheduling_choice") is None:
            triton.dynamic_batching.SetInParent()
    skip = 1 if triton.max_batch_size > 0 else 0

    def dims(node) -> list[int]:
        return [d if isinstance(d, int) and d > 0 else -1 for d in node.shape[skip:]]

    def datatype(node) -> int:
        row = BY_ORT.get(node.type)
        if row is None:
            raise ModelLoadError(f"model '{model}': tensor '{node.name}' has type {node.type}, "
                                 "which this server does not serve")
        return mc.DataType.Value(row.triton)

    if not triton.input:
        for node in session.get_inputs():
            triton.input.add(name=node.name, data_type=datatype(node), dims=dims(node))
    if not triton.output:
        for node in session.get_outputs():
            triton.output.add(name=node.name, data_type=datatype(node), dims=dims(node))


def _tensor(tensor, group: str, index: int, source: str) -> dict:
    where = f"{source}: field '{group}[{index}]'"
    for field, feature in TENSOR_REFUSED.items():
        if getattr(tensor, field, False):
            raise ModelLoadError(f"{where}: {field} ({feature}) is not supported by this server")
    row = BY_TRITON.get(mc.DataType.Name(tensor.data_type))
    if row is None:
        raise ModelLoadError(
            f"{where}: data_type {mc.DataType.Name(tensor.data_type)} is not served; expected "
            f"one of {', '.join(BY_TRITON)}"
        )
    spec = {"name": tensor.name, "datatype": row.name,
            "shape": list(tensor.dims)}
    if tensor.HasField("reshape"):
        spec["reshape"] = list(tensor.reshape.shape)
    if group == "input":
        spec["optional"] = tensor.optional
        if tensor.format:
            log.info("%s: format is informational here and ignored", where)
    return spec


def from_triton(triton: mc.ModelConfig, model: str, source: str,
                model_dir: Path | None = None) -> ModelConfig:
    """Triton's message (already auto-completed) to our native config."""
    check_backend(triton, model, source)
    if triton.name and triton.name != model:
        raise ModelLoadError(f"{source}: field 'name': must match the model name '{model}' "
                             f"(got {triton.name!r})")
    present = {field.name for field, _ in triton.ListFields()}
    for field in sorted(present & set(REFUSED)):
        raise ModelLoadError(
            f"{source}: field '{field}' ({REFUSED[field]}) is not supported by this server")
    if triton.model_transaction_policy.decoupled:
        raise ModelLoadError(f"{source}: field 'model_transaction_policy': decoupled models "
                             "are not supported")
    for field in sorted(present & IGNORED):
        log.info("%s: field '%s' is accepted and ignored by this server", source, field)

    data: dict = {
        "name": model,
        "max_batch_size": triton.max_batch_size,
        "inputs": [_tensor(t, "input", i, source) for i, t in enumerate(triton.input)],
        "outputs": [_tensor(t, "output", i, source) for i, t in enumerate(triton.output)],
        "version_policy": version_policy(triton),
        "instance_count": sum(max(g.count, 1) for g in triton.instance_group) or 1,
        "task": _task(triton, source, model_dir),
    }
    cuda = _cuda_options(triton, source)
    if cuda:
        data["cuda"] = cuda
    if triton.default_model_filename:
        data["model_filename"] = triton.default_model_filename
    kinds = {g.kind for g in triton.instance_group}
    if kinds == {mc.ModelInstanceGroup.KIND_CPU}:
        data["instance_kind"] = "cpu"
    if any(g.gpus or g.HasField("rate_limiter") or g.profile for g in triton.instance_group):
        log.info("%s: instance_group gpus/rate_limiter/profile are ignored", source)
    if triton.HasField("dynamic_batching"):
        batching = triton.dynamic_batching
        policy = batching.default_queue_policy
        data["dynamic_batching"] = {
            "enabled": True,
            "preferred_batch_sizes": list(batching.preferred_batch_size),
            "max_queue_delay_us": batching.max_queue_delay_microseconds,
            **({"max_queue_size": policy.max_queue_size} if policy.max_queue_size else {}),
        }
        if (batching.priority_levels or batching.priority_queue_policy
                or policy.default_timeout_microseconds or policy.timeout_action):
            log.info("%s: dynamic_batching priorities and queue timeouts are ignored; requests "
                     "keep their own deadlines", source)
    else:
        data["dynamic_batching"] = {"enabled": False}
    return parse_model_config(data, source)


def _cuda_options(triton: mc.ModelConfig, source: str) -> dict:
    """CUDA provider options from `optimization.execution_accelerators` and the legacy
    top-level parameters; everything else under `optimization` is logged as ignored."""
    optimization = triton.optimization
    for field, _ in optimization.ListFields():
        if field.name != "execution_accelerators":
            log.info("%s: field 'optimization.%s' is accepted and ignored", source, field.name)
    accelerators = optimization.execution_accelerators
    options: dict = {}
    for index, accelerator in enumerate(accelerators.gpu_execution_accelerator):
        where = f"optimization.execution_accelerators.gpu_execution_accelerator[{index}]"
        if accelerator.name != CUDA_ACCELERATOR:
            log.info("%s: %s '%s' is ignored: this server runs ONNX Runtime's CUDA provider",
                     source, where, accelerator.name)
            continue
        for key, value in sorted(accelerator.parameters.items()):
            if key in CudaOptions.model_fields:
                options[key] = value
            else:
                log.info("%s: %s parameter '%s' is not used by this server", source, where, key)
    for index, accelerator in enumerate(accelerators.cpu_execution_accelerator):
        log.info("%s: optimization.execution_accelerators.cpu_execution_accelerator[%d] '%s' is "
                 "ignored", source, index, accelerator.name)
    for key, codes in LEGACY_CUDA_PARAMETERS.items():
        if key in triton.parameters:
            value = triton.parameters[key].string_value
            options[key] = codes.get(value, value) if codes else value
    return options


def _task(triton: mc.ModelConfig, source: str, model_dir: Path | None) -> dict:
    params = {key: value.string_value for key, value in triton.parameters.items()}
    task: dict = {"kind": params.pop("task_kind", "tensor")}
    for key in sorted(set(params) & TASK_KEYS):
        text = params.pop(key)
        try:
            task[key] = json.loads(text)
        except json.JSONDecodeError:
            task[key] = text  # plain strings such as color_mode
    for key in sorted(set(params) - set(LEGACY_CUDA_PARAMETERS)):
        log.info("%s: parameter '%s' is not used by this server", source, key)
    label_files = [o.label_filename for o in triton.output if o.label_filename]
    if label_files and "labels" not in task and model_dir is not None:
        path = model_dir / label_files[0]
        try:
            task["labels"] = [line.strip() for line in path.read_text().splitlines()
                              if line.strip()]
        except OSError as exc:
            raise ModelLoadError(f"{source}: label_filename {path}: {exc.strerror}") from None
        task.setdefault("kind", "classifier")
    return task


def to_triton(model: ModelDescription, config: ModelConfig) -> mc.ModelConfig:
    """Our native config as Triton's message, for the ModelConfig RPC."""
    triton = mc.ModelConfig(
        name=model.name, platform=ONNX_PLATFORM, backend=ONNX_BACKEND,
        max_batch_size=config.max_batch_size, default_model_filename=config.model_filename,
    )
    for group, specs in ((triton.input, config.inputs), (triton.output, config.outputs)):
        for spec in specs:
            tensor = group.add(name=spec.name, data_type=_triton_type(spec.datatype),
                               dims=spec.shape)
            if spec.reshape is not None:
                tensor.reshape.shape.extend(spec.reshape)
            if spec.optional:
                tensor.optional = True
    policy = config.version_policy
    if policy.all:
        triton.version_policy.all.SetInParent()
    elif policy.specific is not None:
        triton.version_policy.specific.versions.extend(policy.specific)
    else:
        triton.version_policy.latest.num_versions = policy.latest or 1
    if config.batching_enabled:
        batching = config.dynamic_batching
        triton.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
        triton.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
        triton.dynamic_batching.default_queue_policy.max_queue_size = batching.max_queue_size
    kind = (mc.ModelInstanceGroup.KIND_GPU if model.execution_provider == "CUDAExecutionProvider"
            else mc.ModelInstanceGroup.KIND_CPU)
    triton.instance_group.add(count=config.instance_count, kind=kind)
    if config.cuda is not None:
        accelerator = triton.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name=CUDA_ACCELERATOR)
        for key, value in config.cuda.model_dump(exclude_none=True).items():
            accelerator.parameters[key] = str(int(value)) if isinstance(value, bool) else str(value)
    # Triton's parameters are strings: the shared flattening, scalars written as JSON.
    for key, value in task_parameters(model.task).items():
        triton.parameters[key].string_value = value if isinstance(value, str) else json.dumps(value)
    return triton


def config_files(model_dir: Path) -> tuple[Path | None, Path | None]:
    """(native config, Triton config) present in a model directory; both is an error."""
    native, pbtxt = model_dir / NATIVE_FILENAME, model_dir / PBTXT_FILENAME
    has_native, has_pbtxt = native.is_file(), pbtxt.is_file()
    if has_native and has_pbtxt:
        raise ModelLoadError(
            f"model '{model_dir.name}' has two configs, {native} and {pbtxt}; keep one"
        )
    return (native if has_native else None), (pbtxt if has_pbtxt else None)
