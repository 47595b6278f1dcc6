"""Small real ONNX models for the tests, built with onnx.helper (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def save_graph(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def affine_graph(scale: float, bias: float, dim: int = 4, batch_axis: bool = True):
    """y = x * scale + bias on FP32 [batch, dim] (or [dim] without a batch axis)."""
    shape = ["batch", dim] if batch_axis else [dim]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "scale"),
             numpy_helper.from_array(np.array(bias, np.float32), "bias")]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "bias"], ["y"])]
    return helper.make_graph(nodes, "affine", [x], [y], inits)


def identity_graph(elem_type: int, dim: int = 4):
    """y = x for any tensor type on [batch, dim]."""
    x = helper.make_tensor_value_info("x", elem_type, ["batch", dim])
    y = helper.make_tensor_value_info("y", elem_type, ["batch", dim])
    return helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])


def simple_graph():
    """Triton's classic example `simple`: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    ins = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
           for n in ("INPUT0", "INPUT1")]
    outs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
            for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    return helper.make_graph(nodes, "simple", ins, outs)


def slow_graph(dim: int = 512):
    """y = x, exactly, after max(work) identity MatMuls in a Loop: a request chooses how long its
    batch computes, so tests can hold the model busy without sleeping anywhere."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])
    work = helper.make_tensor_value_info("work", TensorProto.INT64, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])
    eye = numpy_helper.from_array(np.eye(dim, dtype=np.float32), "eye")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["carried_in", "eye"], ["carried_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_in", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, ["batch", dim])],
    )
    nodes = [
        helper.make_node("ReduceMax", ["work"], ["trips"], keepdims=0),
        helper.make_node("Constant", [], ["true"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "true", "x"], ["y"], body=body),
    ]
    return helper.make_graph(nodes, "slow", [x, work], [y], [eye])


def fault_graph():
    """y = table[int(x)] with a 10-entry table: an input of 10 or more makes the run fail inside
    ONNX Runtime (Gather index out of range), a real fault triggered by a marker value."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    table = numpy_helper.from_array(np.arange(10, dtype=np.float32) * 10, "table")
    nodes = [helper.make_node("Cast", ["x"], ["idx"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)]
    return helper.make_graph(nodes, "fault", [x], [y], [table])


def write_model(
    repo: Path, name: str, graph, config: dict, versions: tuple[int, ...] = (1,)
) -> Path:
    """Write `<repo>/<name>/config.yaml` and the graph as every listed version."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for version in versions:
        save_graph(graph, model_dir / str(version) / "model.onnx")
    return model_dir


def affine_config(dim: int = 4, **extra) -> dict:
    config = {
        "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [dim]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [dim]}],
        "dynamic_batching": {"max_queue_delay_us": 2000, "preferred_batch_sizes": [4, 8]},
    }
    config.update(extra)
    return config


def simple_config(**extra) -> dict:
    config = {
        "max_batch_size": 8,
        "inputs": [{"name": n, "datatype": "INT32", "shape": [16]} for n in ("INPUT0", "INPUT1")],
        "outputs": [{"name": n, "datatype": "INT32", "shape": [16]}
                    for n in ("OUTPUT0", "OUTPUT1")],
    }
    config.update(extra)
    return config


def slow_config(**extra) -> dict:
    config = {
        "max_batch_size": 16,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [512]},
                   {"name": "work", "datatype": "INT64", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [512]}],
        "dynamic_batching": {"max_queue_delay_us": 1000, "max_queue_size": 4},
    }
    config.update(extra)
    return config


def fault_config(**extra) -> dict:
    config = {
        "max_batch_size": 16,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
        "dynamic_batching": {"max_queue_delay_us": 20000, "preferred_batch_sizes": [16]},
    }
    config.update(extra)
    return config
