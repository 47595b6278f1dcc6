"""Open Inference Protocol REST bodies <-> numpy arrays, with Triton's binary tensor extension.

A request is a JSON header, optionally followed by raw tensor bytes: when the header
`Inference-Header-Content-Length: N` is present, the first N bytes are the JSON and each input
whose `parameters.binary_data_size` is set takes that many bytes of the rest, in input order, as a
view (np.frombuffer: no copy). Other inputs carry `data`, a flat or nested JSON list, checked for
count, type and range.

An input in shared memory names its region in `parameters` (shared_memory_region,
shared_memory_byte_size, shared_memory_offset) and carries neither data nor binary bytes. BYTES
travel as JSON strings (UTF-8) or, in binary, as each element's 4-byte little-endian length then
its bytes.

A response is JSON, or JSON followed by raw output bytes for the outputs asked for in binary
(`parameters.binary_data` on a requested output, or `binary_data_output` on the request, which
tritonclient sets when it names no outputs); the parts are handed over unjoined, so a large
output's bytes are copied once, into the socket (the framework joins only small responses). An
output written to shared memory is described without data.
"""

from __future__ import annotations

import math

import numpy as np
import orjson

from service.core.outputs import OutputRequest, OutputTensor, output_request, region_of
from service.core.shared_memory import SharedMemoryRegistry
from service.core.tensors import (
    array_from_raw, bytes_elements, check_dims, numpy_dtype, raw_from_array,
)
from service.errors import InvalidArgument

HEADER_LENGTH = "inference-header-content-length"


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """(the JSON header as an object, the binary part as a view)."""
    if header_length is None:
        json_bytes, binary = body, memoryview(b"")
    else:
        if not header_length.isdigit():
            raise InvalidArgument(f"header 'Inference-Header-Content-Length': expected a byte "
                                  f"count, got {header_length!r}")
        length = int(header_length)
        if length > len(body):
            raise InvalidArgument(
                f"header 'Inference-Header-Content-Length' is {length} but the body has only "
                f"{len(body)} bytes")
        view = memoryview(body)
        json_bytes, binary = view[:length], view[length:]
    try:
        header = orjson.loads(json_bytes)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"the inference request header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidArgument(
            f"the inference request must be a JSON object, got {type(header).__name__}")
    return header, binary


def _field(obj: dict, key: str, kind: type, where: str, default=None):
    """obj[key] when it is a `kind` (a JSON true is not an integer here), `default` when absent."""
    if key not in obj:
        return default
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidArgument(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def parameters(obj: dict, where: str) -> dict:
    return _field(obj, "parameters", dict, f"{where}.parameters", {})


def decode_inputs(header: dict, binary: memoryview, shm: SharedMemoryRegistry
                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays by input name and the datatype each input declared."""
    inputs = _field(header, "inputs", list, "inputs")
    if inputs is None:
        raise InvalidArgument("inputs: required, a list of tensors")
    arrays: dict[str, np.ndarray] = {}
    declared: dict[str, str] = {}
    offset = 0
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict):
            raise InvalidArgument(f"{where}: expected an object, got {type(tensor).__name__}")
        name = _field(tensor, "name", str, f"{where}.name")
        if not name:
            raise InvalidArgument(f"{where}.name is empty")
        if name in arrays:
            raise InvalidArgument(f"input '{name}' appears more than once in inputs")
        datatype = _field(tensor, "datatype", str, f"input '{name}'.datatype")
        if datatype is None:
            raise InvalidArgument(f"input '{name}': datatype is required")
        dtype = numpy_dtype(datatype, f"input '{name}'")
        shape = _field(tensor, "shape", list, f"input '{name}'.shape")
        if shape is None or not all(isinstance(d, int) and not isinstance(d, bool)
                                    for d in shape):
            raise InvalidArgument(f"input '{name}': shape must be a list of integers, got "
                                  f"{shape!r}")
        check_dims(name, shape)
        params = parameters(tensor, f"input '{name}'")
        size = params.get("binary_data_size")
        region = region_of(params, f"input '{name}'", shm)
        if region is not None:
            if "data" in tensor or size is not None:
                raise InvalidArgument(f"input '{name}': has shared_memory_region and "
                                      f"{'data' if 'data' in tensor else 'binary_data_size'}; "
                                      "send one")
            arrays[name] = array_from_raw(
                region.memory, datatype, shape, name,
                f"shared memory region '{region.region}' (shared_memory_byte_size)")
        elif size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument(f"input '{name}': binary_data_size must be a byte count, "
                                      f"got {size!r}")
            if "data" in tensor:
                raise InvalidArgument(f"input '{name}': has both data and binary_data_size; "
                                      "send one")
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes left)")
            arrays[name] = array_from_raw(binary[offset:offset + size], datatype, shape, name,
                                          "its binary data (binary_data_size)")
            offset += size
        else:
            if "data" not in tensor:
                raise InvalidArgument(f"input '{name}': give data, or binary_data_size with "
                                      "the bytes after the JSON header")
            arrays[name] = _from_json(name, datatype, dtype, shape, math.prod(shape),
                                      tensor["data"])
        declared[name] = datatype
    if offset != len(binary):
        raise InvalidArgument(f"the body has {len(binary) - offset} binary bytes that no input's "
                              "binary_data_size accounts for")
    return arrays, declared


def _from_json(name: str, datatype: str, dtype: np.dtype, shape: list[int], count: int,
               data) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidArgument(f"input '{name}': data must be a list, got {type(data).__name__}")
    text = datatype == "BYTES"
    try:
        values = np.asarray(data, dtype=object if text else None)
    except (ValueError, TypeError, RecursionError):
        raise InvalidArgument(f"input '{name}': data must be a flat or rectangular nested list "
                              f"of {'strings' if text else 'numbers'}") from None
    if values.size != count:
        raise InvalidArgument(f"input '{name}': data has {values.size} values; shape {shape} of "
                              f"{datatype} needs {count}")
    if text:
        flat = values.reshape(-1)
        if not all(isinstance(value, str) for value in flat):
            raise InvalidArgument(f"input '{name}': BYTES data must be strings")
        return bytes_elements([value.encode() for value in flat]).reshape(shape)
    kind = values.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidArgument(f"input '{name}': BOOL data must be true or false values")
    elif dtype.kind in "iu":
        if kind not in "iu":
            raise InvalidArgument(f"input '{name}': {datatype} data must be integers")
        info = np.iinfo(dtype)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise InvalidArgument(f"input '{name}': values must lie in [{info.min}, {info.max}] "
                                  f"for {datatype}, got range [{low}, {high}]")
    elif kind not in "iuf":
        raise InvalidArgument(f"input '{name}': {datatype} data must be numbers")
    return values.astype(dtype, copy=False).reshape(shape)


def requested_outputs(header: dict, shm: SharedMemoryRegistry
                      ) -> tuple[list[str], set[str], dict[str, OutputRequest]]:
    """(output names asked for, those to send as binary, each one's extension parameters)."""
    binary_all = parameters(header, "request").get("binary_data_output") is True
    outputs = _field(header, "outputs", list, "outputs", [])
    names, binary, wanted = [], set(), {}
    for index, output in enumerate(outputs):
        if not isinstance(output, dict):
            raise InvalidArgument(f"outputs[{index}]: expected an object, got "
                                  f"{type(output).__name__}")
        name = _field(output, "name", str, f"outputs[{index}].name")
        if not name:
            raise InvalidArgument(f"outputs[{index}].name is required")
        names.append(name)
        params = parameters(output, f"output '{name}'")
        asked = params.get("binary_data")
        if asked is True or (asked is None and binary_all):
            binary.add(name)
        wanted[name] = output_request(name, params, shm)
    return names, binary, wanted


def encode_response(head: dict, outputs: list[OutputTensor], binary: set[str],
                    binary_all: bool) -> tuple[list[bytes], int | None]:
    """The response's parts and, when any output is binary, the JSON header's length."""
    described, raw = [], []
    for output in outputs:
        entry = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if output.array is None:
            pass  # written to its shared-memory region: described only, as Triton does
        elif output.name in binary or binary_all:
            data = memoryview(raw_from_array(output.array)).cast("B")
            entry["parameters"] = {"binary_data_size": data.nbytes}
            raw.append(data)
        else:
            entry["data"] = _json_data(output)
        described.append(entry)
    head["outputs"] = described
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return [header], None
    return [header, *raw], len(header)


def _json_data(output: OutputTensor):
    flat = np.ascontiguousarray(output.array).reshape(-1)
    if output.datatype != "BYTES":
        return flat
    try:
        return [element.decode() for element in flat]
    except UnicodeDecodeError:
        raise InvalidArgument(f"output '{output.name}' holds bytes that are not UTF-8 text, "
                              "which JSON cannot carry; ask for it with binary_data") from None
