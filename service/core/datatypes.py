"""The one datatype table: each Open Inference Protocol datatype with its numpy dtype, ONNX
Runtime type string, Triton config enum name and the InferTensorContents field that carries it.

BYTES is the one variable-size type: a numpy object array of `bytes` elements (ONNX Runtime's
string tensors), carried raw as each element's 4-byte little-endian length then its bytes
(`service.core.tensors.array_from_raw` / `raw_from_array`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    name: str              # Open Inference Protocol (V2) name, e.g. "FP32"
    numpy: np.dtype
    ort: str               # ONNX Runtime's NodeArg.type, e.g. "tensor(float)"
    triton: str            # Triton's model_config DataType name, e.g. "TYPE_FP32"
    contents_field: str | None  # InferTensorContents field; None: raw bytes only

    @property
    def fixed_size(self) -> bool:
        """Every element takes `numpy.itemsize` bytes (all but BYTES)."""
        return self.numpy != np.dtype(object)


DATATYPES: dict[str, Datatype] = {row.name: row for row in (
    Datatype("BOOL", np.dtype(np.bool_), "tensor(bool)", "TYPE_BOOL", "bool_contents"),
    Datatype("UINT8", np.dtype(np.uint8), "tensor(uint8)", "TYPE_UINT8", "uint_contents"),
    Datatype("UINT16", np.dtype(np.uint16), "tensor(uint16)", "TYPE_UINT16", "uint_contents"),
    Datatype("UINT32", np.dtype(np.uint32), "tensor(uint32)", "TYPE_UINT32", "uint_contents"),
    Datatype("UINT64", np.dtype(np.uint64), "tensor(uint64)", "TYPE_UINT64", "uint64_contents"),
    Datatype("INT8", np.dtype(np.int8), "tensor(int8)", "TYPE_INT8", "int_contents"),
    Datatype("INT16", np.dtype(np.int16), "tensor(int16)", "TYPE_INT16", "int_contents"),
    Datatype("INT32", np.dtype(np.int32), "tensor(int32)", "TYPE_INT32", "int_contents"),
    Datatype("INT64", np.dtype(np.int64), "tensor(int64)", "TYPE_INT64", "int64_contents"),
    Datatype("FP16", np.dtype(np.float16), "tensor(float16)", "TYPE_FP16", None),
    Datatype("FP32", np.dtype(np.float32), "tensor(float)", "TYPE_FP32", "fp32_contents"),
    Datatype("FP64", np.dtype(np.float64), "tensor(double)", "TYPE_FP64", "fp64_contents"),
    Datatype("BYTES", np.dtype(object), "tensor(string)", "TYPE_STRING", "bytes_contents"),
)}

BY_ORT: dict[str, Datatype] = {row.ort: row for row in DATATYPES.values()}
BY_TRITON: dict[str, Datatype] = {row.triton: row for row in DATATYPES.values()}
CONTENTS_FIELDS: tuple[str, ...] = tuple(sorted(
    {row.contents_field for row in DATATYPES.values() if row.contents_field}))
