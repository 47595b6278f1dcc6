"""Checking request tensors against a model's signature.

Protocol front ends decode their wire format into numpy arrays (without copies where they can) and
hand them here; every mistake is reported as InvalidArgument naming the tensor, what the model
expects and what came.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import numpy as np

from service.core.config import ModelConfig, TaskKind, TensorSpec
from service.core.datatypes import DATATYPES
from service.errors import InvalidArgument


def full_shape(spec: TensorSpec, config: ModelConfig) -> list[int]:
    """The tensor's shape as clients see it: with a leading -1 batch axis when batching."""
    return ([-1] if config.max_batch_size > 0 else []) + list(spec.shape)


def numpy_dtype(datatype: str, where: str) -> np.dtype:
    try:
        return DATATYPES[datatype].numpy
    except KeyError:
        raise InvalidArgument(
            f"{where}: datatype '{datatype}' is not supported; expected one of "
            f"{', '.join(DATATYPES)}"
        ) from None


def array_from_raw(buffer, datatype: str, shape: list[int], name: str, what: str) -> np.ndarray:
    """Input `name`'s array from its raw bytes `buffer` (what the front end calls them, e.g.
    "raw_input_contents[0]", for the message): a view of the buffer for fixed-size types, a new
    object array of `bytes` for BYTES (each element a 4-byte little-endian length, then that many
    bytes). `shape` has been through check_dims."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(buffer, count, name, what).reshape(shape)
    dtype = numpy_dtype(datatype, f"input '{name}'")
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidArgument(f"input '{name}': {what} has {len(buffer)} bytes; shape {shape} of "
                              f"{datatype} needs {expected}")
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)


def _bytes_elements(buffer, count: int, name: str, what: str) -> np.ndarray:
    data = memoryview(buffer).cast("B")
    if count * 4 > len(data):  # before the loop: every element takes at least its length
        raise InvalidArgument(f"input '{name}': {what} has {len(data)} bytes, too few for "
                              f"{count} BYTES elements of a 4-byte length each")
    elements = np.empty(count, dtype=object)
    pos, end = 0, len(data)
    for index in range(count):
        if pos + 4 > end:
            raise InvalidArgument(f"input '{name}': {what} ends before BYTES element {index} of "
                                  f"{count}")
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + length > end:
            raise InvalidArgument(f"input '{name}': {what}: BYTES element {index} declares "
                                  f"{length} bytes but only {end - pos} remain")
        elements[index] = bytes(data[pos:pos + length])
        pos += length
    if pos != end:
        raise InvalidArgument(f"input '{name}': {what} has {end - pos} bytes after its {count} "
                              "BYTES elements")
    return elements


def raw_from_array(array: np.ndarray) -> np.ndarray | bytes:
    """An output's raw form: the contiguous array itself (native order is little-endian on every
    platform ONNX Runtime ships for), or for BYTES the serialised elements."""
    if array.dtype != object:
        return np.ascontiguousarray(array)
    parts = []
    for element in array.reshape(-1):
        parts += (struct.pack("<I", len(element)), element)
    return b"".join(parts)


def bytes_elements(values) -> np.ndarray:
    """BYTES elements given one by one (typed contents, JSON strings encoded) as a flat object
    array (np.asarray would make a fixed-width one that drops trailing NULs)."""
    elements = np.empty(len(values), dtype=object)
    elements[:] = [bytes(value) for value in values]
    return elements


def to_runtime_strings(inputs: dict[str, np.ndarray]) -> None:
    """BYTES inputs as the text ONNX Runtime's Python API wants for tensor(string): it would turn
    a `bytes` element into its repr. Elements must be UTF-8."""
    for name, array in inputs.items():
        if array.dtype != object:
            continue
        flat = array.reshape(-1)
        text = np.empty(flat.size, dtype=object)
        for index, element in enumerate(flat):
            try:
                text[index] = element.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidArgument(
                    f"input '{name}': BYTES element {index} is not UTF-8 text ({exc.reason} at "
                    f"byte {exc.start}); ONNX Runtime's string tensors carry text") from None
        inputs[name] = text.reshape(array.shape)


def from_runtime_strings(outputs: dict[str, np.ndarray]) -> None:
    """tensor(string) outputs (str elements) as BYTES (UTF-8 `bytes` elements)."""
    for name, array in outputs.items():
        if array.dtype == object:
            encoded = np.empty(array.size, dtype=object)
            encoded[:] = [element.encode("utf-8") for element in array.reshape(-1)]
            outputs[name] = encoded.reshape(array.shape)


def check_dims(name: str, shape: list[int]) -> None:
    """Every front end checks a declared shape before it reads or allocates its data."""
    if any(d < 1 for d in shape):
        # Empty tensors are refused too: no model here takes one, and a zero dim beside a huge
        # one would otherwise pass the byte-count check.
        raise InvalidArgument(f"input '{name}': shape dims must be >= 1, got {shape}")


def check_inputs(
    config: ModelConfig, model: str, inputs: Mapping[str, np.ndarray], declared: Mapping[str, str]
) -> int:
    """Validate named inputs against the model; return the request's batch size.

    `declared` maps each input name to the datatype the client wrote, so a mismatch is reported in
    the client's own terms.
    """
    expected = {spec.name: spec for spec in config.inputs}
    missing = [name for name, spec in expected.items() if name not in inputs and not spec.optional]
    extra = [name for name in inputs if name not in expected]
    if missing or extra:
        problems = ([f"missing input(s) {missing}"] if missing else []) + \
                   ([f"unexpected input(s) {extra}"] if extra else [])
        raise InvalidArgument(
            f"model '{model}': {' and '.join(problems)}; expected {sorted(expected)}"
        )

    batch_size = 1
    batch_owner = None
    for name, array in inputs.items():
        spec = expected[name]
        if declared[name] != spec.datatype:
            raise InvalidArgument(
                f"input '{name}': datatype must be {spec.datatype}, got {declared[name]}"
            )
        want = full_shape(spec, config)
        got = list(array.shape)
        if len(got) != len(want) or any(w != -1 and w != g for w, g in zip(want, got)):
            raise InvalidArgument(f"input '{name}': shape must be {want}, got {got}")
        if config.max_batch_size > 0:
            if batch_owner is None:
                batch_size, batch_owner = got[0], name
            elif got[0] != batch_size:
                raise InvalidArgument(
                    f"input '{name}': batch dim {got[0]} differs from input "
                    f"'{batch_owner}' batch dim {batch_size}"
                )
    if config.max_batch_size > 0 and batch_size > config.max_batch_size:
        raise InvalidArgument(
            f"model '{model}': batch size must be <= max_batch_size {config.max_batch_size}, "
            f"got {batch_size}"
        )
    _check_class_labels(config, inputs)
    return batch_size


def _check_class_labels(config: ModelConfig, inputs: Mapping[str, np.ndarray]) -> None:
    """A conditional generator's integer inputs are class labels: out of range they would make
    the graph index past its embedding table, a client's mistake that must not become INTERNAL."""
    if config.task.kind is not TaskKind.CONDITIONAL_GENERATOR:
        return
    classes = config.task.num_classes
    for spec in config.inputs:
        array = inputs.get(spec.name)
        if array is None or array.dtype.kind not in "iu" or not array.size:
            continue
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= classes:
            raise InvalidArgument(
                f"input '{spec.name}': class labels must lie in 0..{classes - 1}, "
                f"got range [{low}, {high}]"
            )


def check_requested_outputs(config: ModelConfig, model: str, requested: list[str]) -> list[str]:
    """Output names to return: those requested (validated) or all of them."""
    available = [spec.name for spec in config.outputs]
    if not requested:
        return available
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise InvalidArgument(
            f"model '{model}': unknown requested output(s) {unknown}; available {available}"
        )
    dupes = sorted({n for n in requested if requested.count(n) > 1})
    if dupes:
        raise InvalidArgument(f"model '{model}': output(s) {dupes} requested more than once")
    return requested


def to_graph_shapes(config: ModelConfig, inputs: dict[str, np.ndarray], batch_size: int) -> None:
    """Reshape (views, no copies) inputs whose graph shape differs from their declared shape."""
    lead = [batch_size] if config.max_batch_size > 0 else []
    for spec in config.inputs:
        if spec.reshape is not None and spec.name in inputs:
            inputs[spec.name] = inputs[spec.name].reshape(lead + spec.reshape)


def from_graph_shapes(config: ModelConfig, outputs: dict[str, np.ndarray]) -> None:
    """Give outputs whose graph shape differs from their declared shape the declared one."""
    for spec in config.outputs:
        if spec.reshape is not None and spec.name in outputs:
            array = outputs[spec.name]
            lead = list(array.shape[:1]) if config.max_batch_size > 0 else []
            outputs[spec.name] = array.reshape(lead + spec.shape)
