"""Open Inference Protocol tensors <-> numpy arrays.

Raw contents become arrays with `np.frombuffer` (no copy beyond the one protobuf makes); typed
contents are checked for count and range. Outputs always go back as raw little-endian bytes, as
Triton does; stock clients read either form.
"""

from __future__ import annotations

import math

import numpy as np

from service._proto import grpc_service_pb2 as pb
from service.core.tensors import numpy_dtype
from service.errors import InvalidArgument

# Datatype -> the InferTensorContents field that carries it (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}
_ALL_CONTENTS_FIELDS = sorted(set(CONTENTS_FIELD.values()) | {"bytes_contents"})


def decode_inputs(request: pb.ModelInferRequest) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays by input name, and the datatype each input declared."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but inputs has {len(request.inputs)}; "
            "give one raw entry per input, in the same order, or none"
        )
    arrays: dict[str, np.ndarray] = {}
    declared: dict[str, str] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidArgument(f"inputs[{index}].name is empty")
        if name in arrays:
            raise InvalidArgument(f"input '{name}' appears more than once in inputs")
        dtype = numpy_dtype(tensor.datatype, f"input '{name}'")
        shape = list(tensor.shape)
        if any(d < 1 for d in shape):
            # Empty tensors are refused too: no model here takes one, and a zero dim beside a
            # huge one would otherwise pass the byte-count check.
            raise InvalidArgument(f"input '{name}': shape dims must be >= 1, got {shape}")
        count = math.prod(shape)
        if raw:
            arrays[name] = _from_raw(name, index, tensor, raw[index], dtype, shape, count)
        else:
            arrays[name] = _from_contents(name, tensor, dtype, shape, count)
        declared[name] = tensor.datatype
    return arrays, declared


def _from_raw(name, index, tensor, buffer: bytes, dtype: np.dtype, shape, count) -> np.ndarray:
    if tensor.HasField("contents") and tensor.contents.ByteSize():
        raise InvalidArgument(
            f"input '{name}': has both contents and raw_input_contents[{index}]; send one"
        )
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidArgument(
            f"input '{name}': raw_input_contents[{index}] has {len(buffer)} bytes; shape {shape} "
            f"of {tensor.datatype} needs {expected}"
        )
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)


def _from_contents(name, tensor, dtype: np.dtype, shape, count) -> np.ndarray:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidArgument(
            f"input '{name}': {tensor.datatype} has no typed contents field; "
            "send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        others = [f for f in _ALL_CONTENTS_FIELDS if f != field and len(getattr(tensor.contents, f))]
        hint = f" (values came in contents.{others[0]})" if others else ""
        raise InvalidArgument(
            f"input '{name}': contents.{field} has {len(values)} values; shape {shape} of "
            f"{tensor.datatype} needs {count}{hint}"
        )
    array = np.asarray(values)
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise InvalidArgument(
                f"input '{name}': values must lie in [{info.min}, {info.max}] for "
                f"{tensor.datatype}, got range [{low}, {high}]"
            )
    return array.astype(dtype, copy=False).reshape(shape)


def encode_outputs(
    response: pb.ModelInferResponse, outputs: dict[str, np.ndarray], datatypes: dict[str, str]
) -> None:
    for name, array in outputs.items():
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatypes[name]
        tensor.shape.extend(array.shape)
        # tobytes() writes C order whatever the array's strides: the one copy an output needs.
        # Native order is little-endian on every platform onnxruntime ships for, as raw is.
        response.raw_output_contents.append(array.tobytes())
