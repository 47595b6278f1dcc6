"""The tensor parameters of Triton's extensions, read the same way for every front end, and the
outputs they turn a result into.

Front ends hand over each tensor's parameters as plain values (a gRPC InferParameter's value, a
JSON value): `shared_memory_region` / `shared_memory_byte_size` / `shared_memory_offset` on an
input or requested output (system shared memory), `classification` on a requested output.
`finish_outputs` then writes outputs into their regions and classifies, leaving each front end
only the tensors to encode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from service.core.classification import check_classifiable, classify
from service.core.config import ModelConfig
from service.core.shared_memory import SharedMemoryRegistry
from service.core.tensors import raw_from_array
from service.errors import InvalidArgument

SHM_REGION, SHM_SIZE, SHM_OFFSET = ("shared_memory_region", "shared_memory_byte_size",
                                    "shared_memory_offset")


@dataclass(frozen=True)
class RegionView:
    """A tensor's bytes in a registered region."""

    region: str
    memory: memoryview


@dataclass(frozen=True)
class OutputRequest:
    name: str
    class_count: int = 0            # classification: top-k as BYTES; 0: off
    region: RegionView | None = None  # written into shared memory instead of the response


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None  # None: written to its shared-memory region


def _integer(parameters: Mapping[str, object], key: str, tensor: str, default=None):
    value = parameters.get(key, default)
    if value is default:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{tensor}: parameter '{key}' must be an integer, got "
                              f"{type(value).__name__} {value!r}")
    return value


def region_of(parameters: Mapping[str, object], tensor: str,
              shm: SharedMemoryRegistry) -> RegionView | None:
    """The shared-memory bytes a tensor's parameters name, or None when they name none."""
    region = parameters.get(SHM_REGION)
    if region is None:
        return None
    if not isinstance(region, str):
        raise InvalidArgument(f"{tensor}: parameter '{SHM_REGION}' must be a string, got "
                              f"{type(region).__name__} {region!r}")
    size = _integer(parameters, SHM_SIZE, tensor)
    if size is None:
        raise InvalidArgument(f"{tensor}: parameter '{SHM_SIZE}' is required with "
                              f"'{SHM_REGION}'")
    offset = _integer(parameters, SHM_OFFSET, tensor, 0)
    return RegionView(region, shm.view(region, offset, size, tensor))


def output_request(name: str, parameters: Mapping[str, object],
                   shm: SharedMemoryRegistry) -> OutputRequest:
    tensor = f"output '{name}'"
    count = _integer(parameters, "classification", tensor, 0)
    if "classification" in parameters and count < 1:
        raise InvalidArgument(f"{tensor}: parameter 'classification' must be >= 1, got {count}")
    region = region_of(parameters, tensor, shm)
    if count and region is not None:
        raise InvalidArgument(f"{tensor}: give classification or {SHM_REGION}, not both")
    return OutputRequest(name, count, region)


def finish_outputs(outputs: dict[str, np.ndarray], requests: Mapping[str, OutputRequest],
                   config: ModelConfig) -> list[OutputTensor]:
    """Each output as sent: classified, or written into its region (array None), or as is.
    Every region is checked before any is written, so a refused request leaves the client's
    memory as it was."""
    datatypes = {spec.name: spec.datatype for spec in config.outputs}
    finished, writes = [], []
    for name, array in outputs.items():
        request = requests.get(name)
        datatype = datatypes[name]
        if request is not None and request.class_count:
            check_classifiable(name, datatype)
            array, datatype = classify(array, datatype, request.class_count, config), "BYTES"
        if request is not None and request.region is not None:
            writes.append((request.region, _fitting(request.region, name, array)))
            array_sent = None
        else:
            array_sent = array
        finished.append(OutputTensor(name, datatype, array.shape, array_sent))
    for target, raw in writes:
        # One copy, from the runtime's output straight into the client's memory.
        target.memory[:raw.nbytes] = raw
    return finished


def _fitting(target: RegionView, name: str, array: np.ndarray) -> memoryview:
    raw = memoryview(raw_from_array(array)).cast("B")
    if raw.nbytes > len(target.memory):
        raise InvalidArgument(
            f"output '{name}': shared memory region '{target.region}' gives it "
            f"{len(target.memory)} bytes (shared_memory_byte_size); it needs {raw.nbytes}")
    return raw
