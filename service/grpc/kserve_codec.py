"""Open Inference Protocol tensors <-> numpy arrays, and ModelInfer's wire bytes.

Raw tensor bytes are nearly all of a large request or response, so ModelInfer handles its own wire
format around them: `split_infer_request` cuts raw_input_contents out of the received bytes as
views (protobuf would copy each buffer into its own storage, then again into a new bytes object on
every access) and parses only the small rest with protobuf; `infer_response_bytes` serialises the
small response head with protobuf and appends each output array as a raw_output_contents field,
copying every output byte once. The layout is protobuf's own, so any client parses it as usual.

Typed contents are checked for count and range. Outputs always go back as raw little-endian bytes,
as Triton does; stock clients read either form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from service._proto import grpc_service_pb2 as pb
from service.core.datatypes import CONTENTS_FIELDS, DATATYPES
from service.core.tensors import check_dims, numpy_dtype
from service.errors import InvalidArgument


# Field numbers and length-delimited keys of the repeated bytes fields (grpc_service.proto).
_RAW_INPUT_CONTENTS = 7   # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_KEY = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, wire type 2
_LENGTH_DELIMITED = 2


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise DecodeError("varint longer than 10 bytes")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_infer_request(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    """A serialised ModelInferRequest as (the message without its raw_input_contents, those
    contents as views into `data`). Walks only the top-level fields: a handful per request."""
    view = memoryview(data)
    raw: list[memoryview] = []
    rest: list[memoryview] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            start = pos
            key, pos = _varint(data, pos)
            wire_type = key & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == _LENGTH_DELIMITED:
                length, pos = _varint(data, pos)
                pos += length
            else:
                raise DecodeError(f"unsupported wire type {wire_type} at byte {start}")
            if pos > end:
                raise DecodeError(f"field at byte {start} runs past the end of the message")
            if key >> 3 == _RAW_INPUT_CONTENTS and wire_type == _LENGTH_DELIMITED:
                raw.append(view[pos - length:pos])
            else:
                rest.append(view[start:pos])
        request = pb.ModelInferRequest.FromString(b"".join(rest))
    except DecodeError as exc:
        raise InvalidArgument(f"the request is not a valid ModelInferRequest: {exc}") from None
    return request, raw


def infer_response_bytes(
    head: pb.ModelInferResponse, outputs: dict[str, np.ndarray], datatypes: dict[str, str]
) -> bytes:
    """`head` with each output described in its `outputs`, serialised, followed by one
    raw_output_contents field per output: protobuf's own encoding, since a message may be split and
    concatenated at field boundaries."""
    for name, array in outputs.items():
        head.outputs.add(name=name, datatype=datatypes[name], shape=array.shape)
    parts: list = [head.SerializeToString()]
    for array in outputs.values():
        # Native order is little-endian on every platform onnxruntime ships for, as raw is.
        parts += (_RAW_OUTPUT_KEY, _encode_varint(array.nbytes), np.ascontiguousarray(array))
    return b"".join(parts)


def decode_inputs(
    request: pb.ModelInferRequest, raw: Sequence[memoryview | bytes]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays by input name, and the datatype each input declared; `raw` is the request's
    raw_input_contents (from `split_infer_request`)."""
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
        check_dims(name, shape)
        count = math.prod(shape)
        if raw:
            arrays[name] = _from_raw(name, index, tensor, raw[index], dtype, shape, count)
        else:
            arrays[name] = _from_contents(name, tensor, dtype, shape, count)
        declared[name] = tensor.datatype
    return arrays, declared


def _from_raw(name, index, tensor, buffer: memoryview | bytes, dtype: np.dtype, shape, count) -> np.ndarray:
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
    field = DATATYPES[tensor.datatype].contents_field
    if field is None:
        raise InvalidArgument(
            f"input '{name}': {tensor.datatype} has no typed contents field; "
            "send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        others = [f for f in CONTENTS_FIELDS if f != field and len(getattr(tensor.contents, f))]
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
