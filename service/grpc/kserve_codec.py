"""Open Inference Protocol tensors <-> numpy arrays, and ModelInfer's wire bytes.

Raw tensor bytes are nearly all of a large request or response, so ModelInfer handles its own wire
format around them: `split_infer_request` cuts raw_input_contents out of the received bytes as
views (protobuf would copy each buffer into its own storage, then again into a new bytes object on
every access) and parses only the small rest with protobuf; `infer_response_parts` serialises the
small response head with protobuf and appends each output array as a raw_output_contents field,
copying every output byte once; ModelStreamInfer wraps the same parts in its response the same way.
The layout is protobuf's own, so any client parses it as usual.

Typed contents are checked for count and range. Outputs always go back as raw little-endian bytes
(BYTES: each element's 4-byte length, then its bytes), as Triton does; stock clients read either
form. Inputs and outputs in shared memory are read and written through service.core.outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from service._proto import grpc_service_pb2 as pb
from service.core.datatypes import CONTENTS_FIELDS, DATATYPES
from service.core.outputs import SHM_REGION, OutputTensor, region_of
from service.core.shared_memory import SharedMemoryRegistry
from service.core.tensors import (
    array_from_raw, bytes_elements, check_dims, numpy_dtype, raw_from_array,
)
from service.errors import InvalidArgument


# Field numbers and length-delimited keys of the repeated bytes fields (grpc_service.proto).
_RAW_INPUT_CONTENTS = 7   # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_KEY = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, wire type 2
_ERROR_MESSAGE_KEY = b"\x0a"   # ModelStreamInferResponse.error_message: field 1, wire type 2
_INFER_RESPONSE_KEY = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, wire type 2
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


def parameter_values(parameters) -> dict[str, object]:
    """A protobuf parameter map as plain values (what service.core.outputs reads)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in parameters.items()}


def infer_response_parts(head: pb.ModelInferResponse, outputs: list[OutputTensor]) -> list:
    """`head` with each output described in its `outputs`, serialised, followed by one
    raw_output_contents field per output: protobuf's own encoding, since a message may be split and
    concatenated at field boundaries. An output written to shared memory gets an empty entry, as
    Triton's do, so that tritonclient's index-based as_numpy finds the others."""
    for output in outputs:
        head.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
    parts: list = [head.SerializeToString()]
    for output in outputs:
        raw = b"" if output.array is None else raw_from_array(output.array)
        parts += (_RAW_OUTPUT_KEY, _encode_varint(_size(raw)), raw)
    return parts


def parts_size(parts: list) -> int:
    return sum(_size(part) for part in parts)


def _size(part) -> int:
    return part.nbytes if isinstance(part, np.ndarray) else len(part)


def stream_response_parts(parts: list | None, error: str = "", request_id: str = "") -> list:
    """A ModelStreamInferResponse around a response's parts (infer_response, field 2), or an
    error_message (field 1) with the request's id."""
    if parts is None:
        parts = [pb.ModelInferResponse(id=request_id).SerializeToString()]
        message = error.encode()
        head = [_ERROR_MESSAGE_KEY, _encode_varint(len(message)), message]
    else:
        head = []
    return head + [_INFER_RESPONSE_KEY, _encode_varint(parts_size(parts))] + parts


def decode_inputs(
    request: pb.ModelInferRequest, raw: Sequence[memoryview | bytes], shm: SharedMemoryRegistry
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays by input name, and the datatype each input declared; `raw` is the request's
    raw_input_contents (from `split_infer_request`), one entry per input not in shared memory."""
    takers = [t for t in request.inputs if SHM_REGION not in t.parameters]
    if raw and len(raw) != len(takers):
        others = " not in shared memory" if len(takers) < len(request.inputs) else ""
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries but inputs has {len(takers)}{others}; "
            "give one raw entry per input, in the same order, or none"
        )
    arrays: dict[str, np.ndarray] = {}
    declared: dict[str, str] = {}
    raw_index = 0
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidArgument(f"inputs[{index}].name is empty")
        if name in arrays:
            raise InvalidArgument(f"input '{name}' appears more than once in inputs")
        dtype = numpy_dtype(tensor.datatype, f"input '{name}'")
        shape = list(tensor.shape)
        check_dims(name, shape)
        has_contents = tensor.HasField("contents") and tensor.contents.ByteSize()
        region = region_of(parameter_values(tensor.parameters), f"input '{name}'", shm)
        if region is not None or raw:
            if has_contents:
                source = (f"shared memory region '{region.region}'" if region is not None
                          else f"raw_input_contents[{raw_index}]")
                raise InvalidArgument(f"input '{name}': has both contents and {source}; send one")
            if region is not None:
                arrays[name] = array_from_raw(
                    region.memory, tensor.datatype, shape, name,
                    f"shared memory region '{region.region}' (shared_memory_byte_size)")
            else:
                arrays[name] = array_from_raw(raw[raw_index], tensor.datatype, shape, name,
                                              f"raw_input_contents[{raw_index}]")
                raw_index += 1
        else:
            arrays[name] = _from_contents(name, tensor, dtype, shape, math.prod(shape))
        declared[name] = tensor.datatype
    return arrays, declared


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
    if tensor.datatype == "BYTES":
        return bytes_elements(values).reshape(shape)
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
