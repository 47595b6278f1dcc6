"""Build the ONNX files of the example Triton repository (needs the `onnx` package).

    python examples/make_simple_onnx.py

`simple` has a config.pbtxt; `add_sub_autofill` has none, so the server completes its config from
the graph (inputs, outputs, types, dims, batch axis) as Triton does with strict config off.
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent / "triton_repository"


def add_sub_graph():
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
              for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
               for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    model = helper.make_model(helper.make_graph(nodes, "simple", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    for name in ("simple", "add_sub_autofill"):
        onnx.save(add_sub_graph(), str(HERE / name / "1" / "model.onnx"))
        print(HERE / name / "1" / "model.onnx")
