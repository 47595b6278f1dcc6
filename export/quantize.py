"""int8 variant of a bundled classifier: QDQ format, static calibration on training images.

    python -m export.quantize fashion_cnn          # writes models/fashion_cnn_int8/

Calibrates on training images (never the test set the eval reports on), keeps the float
model's config apart from the name, and leaves accuracy and latency to `python -m export.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.evaluate import pixels_to_input
from export.onnx_export import write_config
from service.core.config import CONFIG_FILENAME, load_model_config
from training import common


class _Reader(CalibrationDataReader):
    def __init__(self, inputs: np.ndarray, name: str, batch: int = 64) -> None:
        self._batches = iter([{name: inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self):
        return next(self._batches, None)


def quantize(name: str, models_dir: Path, data_dir=None, calibration: int = 1024) -> Path:
    src_dir = models_dir / name
    config = load_model_config(src_dir / CONFIG_FILENAME)
    dst_name = f"{name}_int8"
    dst_dir = models_dir / dst_name
    (dst_dir / "1").mkdir(parents=True, exist_ok=True)
    images, _ = common.load_mnist_like("train", data_dir)
    rng = np.random.default_rng(0)
    calib = pixels_to_input(
        images[rng.choice(len(images), calibration, replace=False)], config.task.input_scaling
    )
    pre = dst_dir / "1" / "preprocessed.onnx"
    quant_pre_process(str(src_dir / "1" / config.model_filename), str(pre))
    out = dst_dir / "1" / config.model_filename
    quantize_static(
        str(pre),
        str(out),
        _Reader(calib, config.inputs[0].name),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        # Softmax stays float: quantized probabilities no longer sum to 1.
        op_types_to_quantize=["Conv", "Gemm", "MatMul"],
    )
    pre.unlink()
    write_config(config.model_copy(update={"name": dst_name}), dst_dir)
    card = json.loads((src_dir / "card.json").read_text())
    card["title"] = dst_name
    card["what"] = (
        f"int8 version of `{name}` for CPU: ONNX Runtime static quantization, QDQ format, "
        f"per-channel int8 weights and int8 activations calibrated on {calibration} training "
        f"images. Same inputs, outputs and config. " + card.get("what", "")
    )
    card["export"] = {
        **card.get("export", {}),
        "parity_max_abs_diff": {},
        "quantized_from": name,
        "file_bytes": out.stat().st_size,
    }
    card["train_command"] = card.get("train_command", "") + f"; python -m export.quantize {name}"
    (dst_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
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
        quantize(name, Path(args.models_dir), args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
