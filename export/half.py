"""fp16 variants of bundled models for the CUDA provider, fp32 inputs and outputs kept.

    python -m export.half fashion_cnn espcn_x2 espcn_x3 espcn_x4   # writes models/<name>_fp16/

onnxconverter-common's float16 conversion turns weights and activations to fp16 and puts Cast
nodes at the graph's edges (keep_io_types), so clients send and receive fp32 as before. The
variant's config is the float model's with `instance_kind: gpu`: a CPU-only server does not
serve it (ONNX Runtime's CPU provider runs it, but several times slower than the fp32 model on a
CPU without fp16 arithmetic). Accuracy or PSNR against the float model is left to
`python -m export.evaluate`, which runs it on the CPU provider.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxconverter_common import float16

from export.evaluate import pixels_to_input
from export.onnx_export import write_config
from service.core.config import CONFIG_FILENAME, TaskKind, load_model_config
from training import common

# Max |fp16 - fp32| on the parity inputs (CPU provider), relative to the output's largest
# magnitude (absolute below 1: probabilities, 0..1 pixels).
PARITY_TOLERANCE = 2e-2


def convert(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 graph with fp32 inputs and outputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight clipped to fp16's range
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    # A graph output that other nodes also read (the classifier's `features`) becomes the fp32
    # Cast of an fp16 tensor, yet its readers still ask for it by name and would mix fp32 with
    # their fp16 weights: point them at the fp16 tensor before the Cast.
    outputs = {o.name for o in half.graph.output}
    before_cast = {n.output[0]: n.input[0] for n in half.graph.node
                   if n.op_type == "Cast" and n.output[0] in outputs}
    for node in half.graph.node:
        if node.output[0] in before_cast:
            continue
        for i, name in enumerate(node.input):
            if name in before_cast:
                node.input[i] = before_cast[name]
    onnx.checker.check_model(half, full_check=True)
    return half


def parity_inputs(config, data_dir) -> list[np.ndarray]:
    """Held-out inputs at batch 1 and a larger batch: test images for classifiers, uniform
    pixels for super-resolution (fully convolutional: any picture tests it)."""
    rng = np.random.default_rng(0)
    if config.task.kind is TaskKind.SUPER_RESOLUTION:
        return [rng.random((batch, 1, 48, 40), dtype=np.float32) for batch in (1, 4)]
    images, _ = common.load_mnist_like("test", data_dir, limit=65)
    scaled = pixels_to_input(images, config.task.input_scaling)
    return [scaled[:1], scaled[1:]]


def max_abs_diff(reference: Path, variant: bytes, config, inputs) -> dict[str, float]:
    """Max |fp16 - fp32| per output and batch; raises when one is over the tolerance."""
    sessions = [ort.InferenceSession(source, providers=["CPUExecutionProvider"])
                for source in (str(reference), variant)]
    names = [o.name for o in config.outputs]
    report = {}
    for x in inputs:
        feeds = {config.inputs[0].name: x}
        want, got = (s.run(names, feeds) for s in sessions)
        for name, w, g in zip(names, want, got):
            key = f"{name}@batch{len(x)}"
            report[key] = float(np.max(np.abs(w - g)))
            limit = PARITY_TOLERANCE * max(1.0, float(np.max(np.abs(w))))
            if not report[key] <= limit:
                raise AssertionError(f"{config.name}: max |fp16 - fp32| of {key} "
                                     f"{report[key]:.3g} > {limit:.3g}")
    return report


def half(name: str, models_dir: Path, data_dir=None) -> Path:
    src_dir = models_dir / name
    config = load_model_config(src_dir / CONFIG_FILENAME)
    dst_name = f"{name}_fp16"
    dst_dir = models_dir / dst_name
    (dst_dir / "1").mkdir(parents=True, exist_ok=True)
    source = src_dir / "1" / config.model_filename
    converted = convert(onnx.load(str(source))).SerializeToString()
    parity = max_abs_diff(source, converted, config, parity_inputs(config, data_dir))
    out = dst_dir / "1" / config.model_filename
    out.write_bytes(converted)
    write_config(config.model_copy(update={"name": dst_name, "instance_kind": "gpu"}), dst_dir)
    card = json.loads((src_dir / "card.json").read_text())
    card["title"] = dst_name
    card["what"] = (
        f"fp16 version of `{name}` for the CUDA provider: onnxconverter-common float16 "
        "conversion, fp32 inputs and outputs kept (Cast nodes at the edges). `instance_kind: "
        "gpu`: a CPU-only server does not serve it. " + card.get("what", "")
    )
    card["export"] = {
        **card.get("export", {}),
        "converted_from": name,
        "parity_max_abs_diff": parity,
        "parity_tolerance": f"{PARITY_TOLERANCE} x max(1, |fp32 output|)",
        "parity_against": f"{name} (fp32), CPU provider",
        "file_bytes": out.stat().st_size,
    }
    card["train_command"] = card.get("train_command", "") + f"; python -m export.half {name}"
    (dst_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB), max |fp16 - fp32| "
          f"{max(parity.values()):.2e}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("names", nargs="+")
    p.add_argument("--models-dir", default="models")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    for name in args.names:
        half(name, Path(args.models_dir), args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
