"""Export helper: torch module -> ONNX file, checker, ONNX Runtime parity, service config.

Every family's exporter goes through `export_model`, so every bundled model gets the same
checks: opset >= 17, named dynamic axes, `onnx.checker`, and ORT-vs-PyTorch parity at batch 1
and at a batch > 1, gated by a tolerance.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml

from service.core.config import (
    CONFIG_FILENAME,
    DynamicBatching,
    PixelScaling,
    ModelConfig,
    TaskMetadata,
    TensorSpec,
    load_model_config,
)

OPSET = 17
VERSION = 1


class ParityError(AssertionError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


@dataclass
class TensorIO:
    """One graph input or output: name, datatype and shape without the batch axis (-1 = dynamic)."""

    name: str
    shape: list[int]
    datatype: str = "FP32"
    dynamic_names: dict[int, str] = field(default_factory=dict)
    """Axis index (counting the batch axis as 0) -> symbolic name, beyond the batch axis."""

    def spec(self) -> TensorSpec:
        return TensorSpec(name=self.name, datatype=self.datatype, shape=self.shape)


def batching(max_batch_size: int) -> DynamicBatching:
    # Small-batch models (super-resolution: 8) wait for half or a full batch; the rest for 16/64.
    if max_batch_size >= 64:
        preferred = [16, 64]
    else:
        preferred = sorted({max(max_batch_size // 2, 1), max_batch_size})
    return DynamicBatching(enabled=True, max_queue_delay_us=500, preferred_batch_sizes=preferred)


def build_config(
    name: str,
    inputs: list[TensorIO],
    outputs: list[TensorIO],
    task: TaskMetadata,
    max_batch_size: int,
) -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        inputs=[t.spec() for t in inputs],
        outputs=[t.spec() for t in outputs],
        dynamic_batching=batching(max_batch_size),
        task=task,
    )


def write_config(config: ModelConfig, model_dir: Path) -> Path:
    """Dump the pydantic config to YAML and read it back through the service's own loader."""
    path = model_dir / CONFIG_FILENAME
    data = config.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = load_model_config(path)
    if loaded != config:
        raise AssertionError(f"{path}: config changed on a YAML round trip")
    return path


def _torch_run(module: torch.nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*inputs)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() for o in out]


def check_parity(
    module: torch.nn.Module,
    onnx_path: Path,
    input_names: list[str],
    output_names: list[str],
    samples: list[list[torch.Tensor]],
    atol: float,
) -> dict:
    """Max |ORT - PyTorch| per output over each sample batch; raises ParityError above `atol`."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    report: dict[str, float] = {}
    for sample in samples:
        expected = _torch_run(module, sample)
        feeds = {n: t.cpu().numpy() for n, t in zip(input_names, sample)}
        got = session.run(output_names, feeds)
        batch = int(sample[0].shape[0])
        for name, e, g in zip(output_names, expected, got):
            if e.shape != g.shape:
                raise ParityError(f"{onnx_path}: output {name} shape {g.shape} != torch {e.shape}")
            diff = (
                float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64))))
                if e.size
                else 0.0
            )
            report[f"{name}@batch{batch}"] = diff
            if not diff <= atol:
                raise ParityError(
                    f"{onnx_path}: output {name} at batch {batch}: max abs diff "
                    f"{diff:.3g} > tolerance {atol:.3g}"
                )
    return report


def export_model(
    module: torch.nn.Module,
    *,
    name: str,
    models_dir: Path,
    inputs: list[TensorIO],
    outputs: list[TensorIO],
    samples: list[list[torch.Tensor]],
    task: TaskMetadata,
    max_batch_size: int,
    atol: float = 1e-4,
    card: dict | None = None,
) -> dict:
    """Write models/<name>/1/model.onnx and models/<name>/config.yaml; return the export report.

    `samples` are held-out input batches (at least one of batch 1 and one larger) used both to
    trace the graph and to compare ONNX Runtime against PyTorch.
    """
    module = module.eval().cpu()
    model_dir = Path(models_dir) / name
    version_dir = model_dir / str(VERSION)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / "model.onnx"
    input_names = [t.name for t in inputs]
    output_names = [t.name for t in outputs]
    dynamic_axes = {t.name: {0: "batch", **t.dynamic_names} for t in inputs + outputs}
    trace_input = tuple(s.cpu() for s in samples[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            trace_input,
            str(onnx_path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    if not any(b.shape[0] == 1 for b in (s[0] for s in samples)) or all(
        s[0].shape[0] == 1 for s in samples
    ):
        raise ValueError("parity needs a sample at batch 1 and one at batch > 1")
    parity = check_parity(module, onnx_path, input_names, output_names, samples, atol)
    config = build_config(name, inputs, outputs, task, max_batch_size)
    config_path = write_config(config, model_dir)
    report = {
        "name": name,
        "onnx": str(onnx_path),
        "config": str(config_path),
        "opset": OPSET,
        "file_bytes": onnx_path.stat().st_size,
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "parity_max_abs_diff": parity,
        "parity_tolerance": atol,
    }
    card_info = dict(card or {})
    card_info["export"] = report
    (model_dir / "card.json").write_text(json.dumps(card_info, indent=2) + "\n")
    print(f"exported {name}: {report['file_bytes'] / 1024:.0f} KiB, parity {parity}")
    return report


PIXEL_01 = PixelScaling(scale=1 / 255, mean=0.0, std=1.0)
PIXEL_TANH = PixelScaling(scale=1 / 255, mean=0.5, std=0.5)
