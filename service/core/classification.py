"""Triton's classification extension: an output requested with `classification: k` comes back as
BYTES, per batch item its k highest values as "<score>:<index>[:<label>]", highest first.

As Triton formats them: the score with C's "%f" for FP32 and FP64 (six decimals, std::to_string)
and as an integer for integer types; the label is the model's task label for that index (from
`task.labels`, or a Triton config's `label_filename`), left out past the end of the labels. Equal
scores keep index order (Triton's order for ties is unspecified). FP16, BOOL and BYTES outputs are
refused, as Triton refuses them.
"""

from __future__ import annotations

import numpy as np

from service.core.config import ModelConfig
from service.errors import InvalidArgument

_CLASSIFIABLE = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                 "FP32", "FP64"}


def check_classifiable(name: str, datatype: str) -> None:
    if datatype not in _CLASSIFIABLE:
        raise InvalidArgument(f"output '{name}': classification needs a numeric output "
                              f"({', '.join(sorted(_CLASSIFIABLE))}); it is {datatype}")


def classify(array: np.ndarray, datatype: str, count: int, config: ModelConfig) -> np.ndarray:
    """The top `count` of each batch item of `array` (of the whole tensor for a model without a
    batch axis), as an object array of bytes of shape [batch, k] (or [k])."""
    batched = config.max_batch_size > 0 and array.ndim > 0
    items = array.reshape(len(array), -1) if batched else array.reshape(1, -1)
    k = min(count, items.shape[1])
    labels = config.task.labels or []
    floating = datatype in ("FP32", "FP64")
    result = np.empty((len(items), k), dtype=object)
    for row, values in enumerate(items):
        # Descending, ties in index order: a stable ascending sort of the reversed values.
        order = len(values) - 1 - np.argsort(values[::-1], kind="stable")[::-1][:k]
        for column, index in enumerate(order):
            score = f"{float(values[index]):f}" if floating else str(int(values[index]))
            text = f"{score}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            result[row, column] = text.encode()
    return result if batched else result.reshape(k)
