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


def simple_string_graph():
    """Triton's example `simple_string`: INPUT0 and INPUT1 hold integers as text (BYTES);
    OUTPUT0 is their sum and OUTPUT1 their difference, as text: strings to int and back."""
    ins = [helper.make_tensor_value_info(n, TensorProto.STRING, ["batch", 16])
           for n in ("INPUT0", "INPUT1")]
    outs = [helper.make_tensor_value_info(n, TensorProto.STRING, ["batch", 16])
            for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
             helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
             helper.make_node("Add", ["a", "b"], ["sum"]),
             helper.make_node("Sub", ["a", "b"], ["difference"]),
             helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
             helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING)]
    return helper.make_graph(nodes, "simple_string", ins, outs)


def string_identity_graph(dim: int = 16):
    """Triton's example `simple_identity`: OUTPUT0 = INPUT0, BYTES [batch, dim]."""
    x = helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", dim])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", dim])
    return helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
                             "simple_identity", [x], [y])


def slow_text_graph(dim: int = 512, width: int = 4):
    """The slow graph (y = x after max(work) MatMuls) that also passes BYTES `text` [batch,
    width] through as `text_out`: string requests that queue behind a busy instance."""
    graph = slow_graph(dim)
    graph.input.append(helper.make_tensor_value_info("text", TensorProto.STRING,
                                                     ["batch", width]))
    graph.output.append(helper.make_tensor_value_info("text_out", TensorProto.STRING,
                                                      ["batch", width]))
    graph.node.append(helper.make_node("Identity", ["text"], ["text_out"]))
    return graph


def string_config(inputs: tuple[str, ...], outputs: tuple[str, ...], dim: int = 16,
                  **extra) -> dict:
    config = {
        "max_batch_size": 8,
        "inputs": [{"name": n, "datatype": "BYTES", "shape": [dim]} for n in inputs],
        "outputs": [{"name": n, "datatype": "BYTES", "shape": [dim]} for n in outputs],
        "dynamic_batching": {"max_queue_delay_us": 2000, "preferred_batch_sizes": [4, 8]},
    }
    config.update(extra)
    return config


def _identity_matmul_body(dim: int):
    """A Loop body that multiplies its [batch, dim] carry by the identity (`eye`, from the
    enclosing graph): exact, and as slow as its trip count."""
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["carried_in", "eye"], ["carried_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_in", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, ["batch", dim])],
    )


def slow_graph(dim: int = 512):
    """y = x, exactly, after max(work) identity MatMuls in a Loop: a request chooses how long its
    batch computes, so tests can hold the model busy without sleeping anywhere."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])
    work = helper.make_tensor_value_info("work", TensorProto.INT64, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])
    eye = numpy_helper.from_array(np.eye(dim, dtype=np.float32), "eye")
    body = _identity_matmul_body(dim)
    nodes = [
        helper.make_node("ReduceMax", ["work"], ["trips"], keepdims=0),
        helper.make_node("Constant", [], ["true"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "true", "x"], ["y"], body=body),
    ]
    return helper.make_graph(nodes, "slow", [x, work], [y], [eye])


def slow_start_graph(trips: int, dim: int = 64):
    """y = x after a fixed `trips` identity MatMuls in a Loop: every run, warm-up included, takes
    as long, so a server spends a while loading it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])
    eye = numpy_helper.from_array(np.eye(dim, dtype=np.float32), "eye")
    body = _identity_matmul_body(dim)
    nodes = [
        helper.make_node("Constant", [], ["trips"],
                         value=helper.make_tensor("n", TensorProto.INT64, [], [trips])),
        helper.make_node("Constant", [], ["true"],
                         value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "true", "x"], ["y"], body=body),
    ]
    return helper.make_graph(nodes, "slow_start", [x], [y], [eye])


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


# -- small models of every task kind, for the task API -------------------------------------------

IMAGE_SCALING = {"scale": 1 / 255, "mean": 0.5, "std": 0.5}  # pixels to [-1, 1] and back


def _weights(name: str, shape, seed: int) -> TensorProto:
    return numpy_helper.from_array(
        np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.3, name)


def brightness_classifier_graph(side: int = 8):
    """probabilities = softmax([4m, -4m, 0]) where m is the mean input: bright images are class 0,
    dark ones class 1."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, side, side])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])
    w = np.zeros((side * side, 3), np.float32)
    w[:, 0], w[:, 1] = 4.0 / (side * side), -4.0 / (side * side)
    nodes = [helper.make_node("Flatten", ["images"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    return helper.make_graph(nodes, "brightness", [x], [y], [numpy_helper.from_array(w, "w")])


def latent_to_image_graph(latent: int = 4, side: int = 8, conditional: bool = False):
    """images = tanh(latent @ W (+ class_label * v)), reshaped to 1 x side x side."""
    z = helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", latent])
    ins = [z]
    out = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, side, side])
    inits = [_weights("w", (latent, side * side), 1),
             numpy_helper.from_array(np.array([-1, 1, side, side], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["latent", "w"], ["mixed"])]
    pre = "mixed"
    if conditional:
        ins.append(helper.make_tensor_value_info("class_label", TensorProto.INT64, ["batch", 1]))
        inits.append(_weights("v", (1, side * side), 2))
        nodes += [helper.make_node("Cast", ["class_label"], ["label_f"], to=TensorProto.FLOAT),
                  helper.make_node("MatMul", ["label_f", "v"], ["shift"]),
                  helper.make_node("Add", ["mixed", "shift"], ["conditioned"])]
        pre = "conditioned"
    nodes += [helper.make_node("Tanh", [pre], ["flat"]),
              helper.make_node("Reshape", ["flat", "shape"], ["images"])]
    return helper.make_graph(nodes, "generator", ins, [out], inits)


def encoder_graph(latent: int = 4, side: int = 8):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, side, side])
    z = helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", latent])
    nodes = [helper.make_node("Flatten", ["images"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["latent"])]
    return helper.make_graph(nodes, "encoder", [x], [z], [_weights("w", (side * side, latent), 3)])


def identity_autoencoder_graph(side: int = 8):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, side, side])
    y = helper.make_tensor_value_info("reconstructions", TensorProto.FLOAT,
                                      ["batch", 1, side, side])
    return helper.make_graph([helper.make_node("Identity", ["images"], ["reconstructions"])],
                             "autoencoder", [x], [y])


def super_resolution_graph(scale: int, seed: int = 4):
    """ESPCN-shaped: 3x3 conv to scale^2 channels, then depth-to-space; any height and width.
    Another seed gives other weights (another version of the model)."""
    x = helper.make_tensor_value_info("low_res", TensorProto.FLOAT, ["batch", 1, "h", "w"])
    y = helper.make_tensor_value_info("high_res", TensorProto.FLOAT,
                                      ["batch", 1, "H", "W"])
    kernel = np.random.default_rng(seed).uniform(0.0, 0.25, (scale * scale, 1, 3, 3))
    nodes = [helper.make_node("Conv", ["low_res", "k"], ["features"], pads=[1, 1, 1, 1]),
             helper.make_node("DepthToSpace", ["features"], ["high_res"], blocksize=scale)]
    return helper.make_graph(nodes, "espcn", [x], [y],
                             [numpy_helper.from_array(kernel.astype(np.float32), "k")])


def image_spec(name: str, side: int = 8) -> dict:
    return {"name": name, "datatype": "FP32", "shape": [1, side, side]}


def write_task_models(repo: Path) -> None:
    """One small model of every task kind."""
    write_model(repo, "brightness", brightness_classifier_graph(), {
        "max_batch_size": 16, "inputs": [image_spec("images")],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [3]}],
        "task": {"kind": "classifier", "labels": ["bright", "dark", "neutral"], "num_classes": 3,
                 "input_scaling": IMAGE_SCALING, "color_mode": "grey"}})
    latent = {"name": "latent", "datatype": "FP32", "shape": [4]}
    write_model(repo, "gen", latent_to_image_graph(), {
        "max_batch_size": 16, "inputs": [latent], "outputs": [image_spec("images")],
        "task": {"kind": "generator", "latent_size": 4, "output_scaling": IMAGE_SCALING}})
    write_model(repo, "cgen", latent_to_image_graph(conditional=True), {
        "max_batch_size": 16,
        "inputs": [latent, {"name": "class_label", "datatype": "INT64", "shape": [1]}],
        "outputs": [image_spec("images")],
        "task": {"kind": "conditional_generator", "latent_size": 4, "num_classes": 3,
                 "labels": ["a", "b", "c"], "output_scaling": IMAGE_SCALING}})
    write_model(repo, "enc", encoder_graph(), {
        "max_batch_size": 16, "inputs": [image_spec("images")], "outputs": [latent],
        "task": {"kind": "encoder", "latent_size": 4, "input_scaling": IMAGE_SCALING}})
    write_model(repo, "dec", latent_to_image_graph(), {
        "max_batch_size": 16, "inputs": [latent], "outputs": [image_spec("images")],
        "task": {"kind": "decoder", "latent_size": 4, "output_scaling": IMAGE_SCALING}})
    write_model(repo, "ae", identity_autoencoder_graph(), {
        "max_batch_size": 16, "inputs": [image_spec("images")],
        "outputs": [image_spec("reconstructions")],
        "task": {"kind": "autoencoder", "input_scaling": IMAGE_SCALING,
                 "output_scaling": IMAGE_SCALING}})
    unit = {"scale": 1 / 255, "mean": 0.0, "std": 1.0}
    write_model(repo, "sr", super_resolution_graph(3), {
        "max_batch_size": 8,
        "inputs": [{"name": "low_res", "datatype": "FP32", "shape": [1, -1, -1]}],
        "outputs": [{"name": "high_res", "datatype": "FP32", "shape": [1, -1, -1]}],
        "task": {"kind": "super_resolution", "upscale_factor": 3, "color_mode": "y",
                 "input_scaling": unit, "output_scaling": unit}})
