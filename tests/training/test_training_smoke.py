"""Per family: a few training steps on a small slice, export, parity and config validity.

Parity (ORT vs PyTorch at batch 1 and > 1) and the config's round trip through the service's own
loader are asserted inside `export_model`; these tests also re-load each written config.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from export import evaluate, families
from service.core.config import CONFIG_FILENAME, TaskKind, load_model_config

# Small enough that every family trains in seconds on 2 cores.
FASHION_ARGS = ["--dry-run", "--quiet", "--limit", "512"]


def _check(models_dir, names_kinds: dict[str, TaskKind]) -> None:
    for name, kind in names_kinds.items():
        config = load_model_config(models_dir / name / CONFIG_FILENAME)
        assert config.task.kind is kind
        assert (models_dir / name / "1" / "model.onnx").stat().st_size > 0
        card = json.loads((models_dir / name / "card.json").read_text())
        parity = card["export"]["parity_max_abs_diff"]
        assert any("batch1" in k for k in parity) and any("batch1" not in k for k in parity)
        assert max(parity.values()) <= card["export"]["parity_tolerance"]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_classifier(arch, tmp_path, models_dir, fashion_available):
    from training.classifier import train

    ckpt = train.main(["--arch", arch, "--run-dir", str(tmp_path), *FASHION_ARGS])
    families.export_classifier(ckpt, models_dir)
    _check(models_dir, {f"fashion_{arch}": TaskKind.CLASSIFIER})
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "loss.png").exists()


def test_autoencoder(tmp_path, models_dir, fashion_available):
    from training.autoencoder import train

    ckpt = train.main(["--run-dir", str(tmp_path), *FASHION_ARGS])
    families.export_autoencoder(ckpt, models_dir)
    _check(
        models_dir,
        {
            "conv_autoencoder": TaskKind.AUTOENCODER,
            "conv_encoder": TaskKind.ENCODER,
            "conv_decoder": TaskKind.DECODER,
        },
    )
    assert load_model_config(models_dir / "conv_encoder" / CONFIG_FILENAME).outputs[0].shape == [
        128
    ]


def test_vae(tmp_path, models_dir, fashion_available):
    from training.vae import train

    ckpt = train.main(["--run-dir", str(tmp_path), *FASHION_ARGS])
    families.export_vae(ckpt, models_dir)
    _check(
        models_dir,
        {
            "vae": TaskKind.AUTOENCODER,
            "vae_encoder": TaskKind.ENCODER,
            "vae_decoder": TaskKind.GENERATOR,
        },
    )
    assert (tmp_path / "latent_map.png").exists()


@pytest.mark.parametrize("conditional", [False, True])
def test_gan(conditional, tmp_path, models_dir, fashion_available):
    from training.gan import train

    ckpt = train.main(
        ["--run-dir", str(tmp_path), *FASHION_ARGS] + (["--conditional"] if conditional else [])
    )
    families.export_gan(ckpt, models_dir)
    name = "cdcgan" if conditional else "dcgan"
    kind = TaskKind.CONDITIONAL_GENERATOR if conditional else TaskKind.GENERATOR
    _check(models_dir, {name: kind})
    config = load_model_config(models_dir / name / CONFIG_FILENAME)
    if conditional:
        assert [(t.name, t.datatype, t.shape) for t in config.inputs][1] == (
            "class_label",
            "INT64",
            [1],
        )


@pytest.fixture(scope="module")
def sr_images(tmp_path_factory):
    """Smooth synthetic photos (any folder of PNG/JPEG works), laid out like Set5/Set14."""
    root = tmp_path_factory.mktemp("sr")
    rng = np.random.default_rng(0)
    for sub in ("train", "Set5", "Set14"):
        (root / sub).mkdir()
        for i in range(3):
            noise = rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8)
            Image.fromarray(noise).resize((128, 112), Image.BICUBIC).save(
                root / sub / f"img{i}.png"
            )
    return root


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_espcn(scale, tmp_path, models_dir, sr_images):
    from training.sr import train

    ckpt = train.main(
        [
            "--scale",
            str(scale),
            "--train-dir",
            str(sr_images / "train"),
            "--eval-dir",
            str(sr_images / "Set5"),
            "--run-dir",
            str(tmp_path),
            "--dry-run",
            "--quiet",
        ]
    )
    families.export_sr(ckpt, models_dir)
    _check(models_dir, {f"espcn_x{scale}": TaskKind.SUPER_RESOLUTION})
    config = load_model_config(models_dir / f"espcn_x{scale}" / CONFIG_FILENAME)
    assert config.inputs[0].shape == [1, -1, -1] and config.task.upscale_factor == scale
    assert config.max_batch_size == 8


def test_fp16_variant(models_dir, tmp_path, fashion_available):
    """export.half: an fp16 graph with fp32 inputs and outputs, for the CUDA provider only; its
    parity against the float model is checked inside half()."""
    from onnx import TensorProto, load

    from export import half

    if not (models_dir / "fashion_cnn").exists():
        from training.classifier import train

        ckpt = train.main(["--arch", "cnn", "--run-dir", str(tmp_path), *FASHION_ARGS])
        families.export_classifier(ckpt, models_dir)
    out = half.half("fashion_cnn", models_dir)
    config = load_model_config(models_dir / "fashion_cnn_fp16" / CONFIG_FILENAME)
    assert config.name == "fashion_cnn_fp16" and config.instance_kind == "gpu"
    assert [s.datatype for s in config.inputs + config.outputs] == ["FP32"] * 3
    weights = {init.data_type for init in load(str(out)).graph.initializer}
    assert TensorProto.FLOAT16 in weights and TensorProto.FLOAT not in weights
    card = json.loads((models_dir / "fashion_cnn_fp16" / "card.json").read_text())
    assert card["export"]["converted_from"] == "fashion_cnn"
    assert set(card["export"]["parity_max_abs_diff"]) == {
        f"{o}@batch{b}" for o in ("probabilities", "features") for b in (1, 64)}


def test_eval_over_smoke_models(models_dir, sr_images, tmp_path, fashion_available):
    """The eval command runs end to end over whatever the smoke tests exported."""
    if not (models_dir / "fashion_cnn").exists():
        # Run alone: make the CNN the eval needs (its features drive the generator metrics).
        from training.classifier import train

        ckpt = train.main(["--arch", "cnn", "--run-dir", str(tmp_path), *FASHION_ARGS])
        families.export_classifier(ckpt, models_dir)
    evaluate.main(
        [
            "--models-dir",
            str(models_dir),
            "--test-limit",
            "300",
            "--generated",
            "200",
            "--sr-dir",
            str(sr_images),
            "--no-latency",
        ]
    )
    table = (models_dir / "EVAL.md").read_text()
    for name in ("fashion_cnn", "cdcgan", "espcn_x3", "vae_decoder"):
        if (models_dir / name).exists():
            assert f"| {name} |" in table
            metrics = json.loads((models_dir / name / "metrics.json").read_text())
            assert metrics and all(np.isfinite(v) for v in metrics.values())
            assert (models_dir / name / "README.md").exists()
    if (models_dir / "fashion_cnn_fp16").exists():
        assert "| fashion_cnn_fp16 | fashion_cnn | Converted to fp16 | test_accuracy " in table
    if (models_dir / "cdcgan").exists():
        assert (
            0.0
            <= json.loads((models_dir / "cdcgan" / "metrics.json").read_text())["class_consistency"]
            <= 1.0
        )


def test_training_resumes_from_its_checkpoint(tmp_path, capsys, fashion_available):
    from training import common
    from training.classifier import train

    args = ["--arch", "mlp", "--run-dir", str(tmp_path), "--limit", "256", "--quiet"]
    train.main(args + ["--epochs", "2"])
    first = common.load_checkpoint(tmp_path / "checkpoint.pt")
    capsys.readouterr()
    train.main(args + ["--epochs", "3"])
    assert "resumed from" in capsys.readouterr().out
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert common.load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 3 and first["epoch"] == 2
