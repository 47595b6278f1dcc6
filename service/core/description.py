"""What the core tells front ends about the server and its models, built once here; each protocol
renders these into its own messages and adds nothing of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from service.core.config import ModelConfig, TaskMetadata, TensorSpec
from service.core.tensors import full_shape

SERVER_NAME = "onnx-serve"
SERVER_VERSION = "0.1.0"
# Triton's extension names for what both protocols serve; REST adds its binary tensor format.
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "health", "reflection",
              "system_shared_memory", "classification")
REST_EXTENSIONS = ("binary_tensor_data",)

Parameter = str | int | float | bool


@dataclass(frozen=True)
class ServerDescription:
    name: str
    version: str
    extensions: tuple[str, ...]
    execution_provider: str
    execution_provider_reason: str

    @property
    def rest_extensions(self) -> tuple[str, ...]:
        return self.extensions + REST_EXTENSIONS

    @property
    def parameters(self) -> dict[str, Parameter]:
        return {"execution_provider": self.execution_provider,
                "execution_provider_reason": self.execution_provider_reason}


@dataclass(frozen=True)
class TensorDescription:
    name: str
    datatype: str
    shape: tuple[int, ...]  # as clients see it: a leading -1 batch axis when the model batches


@dataclass(frozen=True)
class ModelDescription:
    name: str
    version: str                # the version the request resolved to
    versions: tuple[str, ...]   # every loaded version
    platform: str
    inputs: tuple[TensorDescription, ...]
    outputs: tuple[TensorDescription, ...]
    execution_provider: str
    max_batch_size: int
    task: TaskMetadata

    @property
    def parameters(self) -> dict[str, Parameter]:
        """Everything a tensor-API client may want beyond the signature, as flat values."""
        return {"execution_provider": self.execution_provider,
                **task_parameters(self.task), "max_batch_size": self.max_batch_size}


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index, in the protocols' vocabulary (Triton's states)."""

    name: str
    version: str
    state: str
    reason: str


def task_parameters(task: TaskMetadata) -> dict[str, Parameter]:
    """Task metadata as flat key/values, lists and objects as JSON text: the one flattening that
    metadata parameters and Triton config parameters share."""
    params: dict[str, Parameter] = {"task_kind": task.kind.value}
    for key, value in task.model_dump(mode="json", exclude_none=True).items():
        if key != "kind":
            params[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return params


def describe_tensors(specs: list[TensorSpec], config: ModelConfig) -> tuple[TensorDescription, ...]:
    return tuple(TensorDescription(s.name, s.datatype, tuple(full_shape(s, config))) for s in specs)
