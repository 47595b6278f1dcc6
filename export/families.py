"""Per-family exporters: rebuild the network from its checkpoint, wrap it, export, write config."""

from __future__ import annotations

from pathlib import Path

import torch

from export.onnx_export import PIXEL_01, PIXEL_TANH, TensorIO, export_model
from service.core.config import PixelScaling, TaskKind, TaskMetadata
from training import common

FASHION = "Fashion-MNIST (60,000 train / 10,000 test, 28x28 grey)"


def default_checkpoint(family: str) -> Path:
    return common.DEFAULT_RUNS / family / "checkpoint.pt"


def _fashion_samples(data_dir, mean: float, std: float) -> list[list[torch.Tensor]]:
    """Held-out parity inputs: test images at batch 1 and batch 8."""
    images, _ = common.load_mnist_like("test", data_dir, limit=9)
    x = common.to_tensor_images(images, None, mean, std)
    return [[x[:1]], [x[1:9]]]


IMAGE_28 = [1, 28, 28]


def export_classifier(ckpt: Path, models_dir: Path, data_dir=None) -> list[dict]:
    from training.classifier.model import ClassifierForExport, build

    state = common.load_checkpoint(ckpt)
    cfg = state["config"]
    net = build(cfg["arch"])
    net.load_state_dict(state["models"]["model"])
    name = f"fashion_{cfg['arch']}"
    outputs = [TensorIO("probabilities", [10])]
    if cfg["arch"] == "cnn":
        outputs.append(TensorIO("features", [net.head[1].in_features]))
    task = TaskMetadata(
        kind=TaskKind.CLASSIFIER,
        labels=common.FASHION_MNIST_LABELS,
        num_classes=10,
        input_scaling=PixelScaling(scale=1 / 255, mean=cfg["mean"], std=cfg["std"]),
        color_mode="grey",
    )
    what = (
        "Multilayer perceptron (784-1024-512-10, ReLU, dropout): the classic Fashion-MNIST baseline."
        if cfg["arch"] == "mlp"
        else "Small CNN: five 3x3 conv/BN/ReLU layers in three pooled stages (32-64-128 channels), "
        "a 256-unit penultimate layer (exported as `features`, used for Frechet distances), dropout, "
        "flip and +-2 px shift augmentation."
    )
    card = {
        "title": name,
        "what": what,
        "dataset": FASHION,
        "train_command": f"python -m training.classifier.train --arch {cfg['arch']} --epochs {state['epoch']}",
        "epochs": state["epoch"],
        "run": ckpt.parent.name,
    }
    return [
        export_model(
            ClassifierForExport(net),
            name=name,
            models_dir=models_dir,
            inputs=[TensorIO("images", IMAGE_28)],
            outputs=outputs,
            samples=_fashion_samples(data_dir, cfg["mean"], cfg["std"]),
            task=task,
            max_batch_size=256,
            atol=1e-4,
            card=card,
        )
    ]


def _fixed_latents(size: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    return [[torch.randn(1, size, generator=g)], [torch.randn(8, size, generator=g)]]


def export_autoencoder(ckpt: Path, models_dir: Path, data_dir=None) -> list[dict]:
    from training.autoencoder.model import LATENT, Autoencoder

    state = common.load_checkpoint(ckpt)
    net = Autoencoder(state["config"]["width"])
    net.load_state_dict(state["models"]["model"])
    samples = _fashion_samples(data_dir, 0.0, 1.0)
    with torch.no_grad():
        latents = [[net.encoder(s[0])] for s in samples]
    base = {
        "dataset": FASHION,
        "train_command": f"python -m training.autoencoder.train --epochs {state['epoch']}",
        "epochs": state["epoch"],
        "run": ckpt.parent.name,
    }
    image = TensorIO("images", IMAGE_28)
    latent = TensorIO("latent", [LATENT])
    grey = {"input_scaling": PIXEL_01, "color_mode": "grey"}
    return [
        export_model(
            net,
            name="conv_autoencoder",
            models_dir=models_dir,
            inputs=[image],
            outputs=[TensorIO("reconstructions", IMAGE_28)],
            samples=samples,
            task=TaskMetadata(
                kind=TaskKind.AUTOENCODER, output_scaling=PIXEL_01, latent_size=LATENT, **grey
            ),
            max_batch_size=64,
            card={
                **base,
                "title": "conv_autoencoder",
                "what": "Fully convolutional autoencoder (conv/pool encoder to a 4x4x8 = 128-value code, "
                "conv/upsample decoder, sigmoid output). Per-image reconstruction MSE is an anomaly score.",
            },
        ),
        export_model(
            net.encoder,
            name="conv_encoder",
            models_dir=models_dir,
            inputs=[image],
            outputs=[latent],
            samples=samples,
            task=TaskMetadata(kind=TaskKind.ENCODER, latent_size=LATENT, **grey),
            max_batch_size=64,
            card={
                **base,
                "title": "conv_encoder",
                "what": "Encoder half of `conv_autoencoder`: image to its 128-value code (8x4x4 flattened).",
            },
        ),
        export_model(
            net.decoder,
            name="conv_decoder",
            models_dir=models_dir,
            inputs=[latent],
            outputs=[TensorIO("images", IMAGE_28)],
            samples=latents,
            task=TaskMetadata(
                kind=TaskKind.DECODER,
                latent_size=LATENT,
                output_scaling=PIXEL_01,
                color_mode="grey",
            ),
            max_batch_size=64,
            card={
                **base,
                "title": "conv_decoder",
                "what": "Decoder half of `conv_autoencoder`: 128-value code to a 28x28 image.",
            },
        ),
    ]


def export_vae(ckpt: Path, models_dir: Path, data_dir=None) -> list[dict]:
    from training.vae.model import LATENT, VAE, MeanEncoder, MeanReconstruction

    state = common.load_checkpoint(ckpt)
    net = VAE()
    net.load_state_dict(state["models"]["model"])
    samples = _fashion_samples(data_dir, 0.0, 1.0)
    base = {
        "dataset": FASHION,
        "train_command": f"python -m training.vae.train --epochs {state['epoch']}",
        "epochs": state["epoch"],
        "run": ckpt.parent.name,
    }
    image = TensorIO("images", IMAGE_28)
    latent = TensorIO("latent", [LATENT])
    return [
        export_model(
            MeanReconstruction(net),
            name="vae",
            models_dir=models_dir,
            inputs=[image],
            outputs=[TensorIO("reconstructions", IMAGE_28)],
            samples=samples,
            task=TaskMetadata(
                kind=TaskKind.AUTOENCODER,
                input_scaling=PIXEL_01,
                output_scaling=PIXEL_01,
                latent_size=LATENT,
                color_mode="grey",
            ),
            max_batch_size=64,
            card={
                **base,
                "title": "vae",
                "what": "Variational autoencoder with a 2-D latent space (conv encoder, transposed-conv decoder, "
                "Bernoulli likelihood); reconstructs through the posterior mean.",
            },
        ),
        export_model(
            MeanEncoder(net.encoder),
            name="vae_encoder",
            models_dir=models_dir,
            inputs=[image],
            outputs=[latent],
            samples=samples,
            task=TaskMetadata(
                kind=TaskKind.ENCODER, input_scaling=PIXEL_01, latent_size=LATENT, color_mode="grey"
            ),
            max_batch_size=64,
            card={
                **base,
                "title": "vae_encoder",
                "what": "VAE encoder: image to the 2-D posterior mean (the point on the latent map).",
            },
        ),
        export_model(
            net.decoder,
            name="vae_decoder",
            models_dir=models_dir,
            inputs=[latent],
            outputs=[TensorIO("images", IMAGE_28)],
            samples=_fixed_latents(LATENT),
            task=TaskMetadata(
                kind=TaskKind.GENERATOR,
                output_scaling=PIXEL_01,
                latent_size=LATENT,
                color_mode="grey",
            ),
            max_batch_size=64,
            card={
                **base,
                "title": "vae_decoder",
                "what": "VAE decoder used as a generator: a 2-D latent (standard normal prior) to a 28x28 image.",
            },
        ),
    ]


def export_gan(ckpt: Path, models_dir: Path, data_dir=None) -> list[dict]:
    from training.gan.model import Generator

    state = common.load_checkpoint(ckpt)
    cfg = state["config"]
    G = Generator(cfg["latent"], cfg["width"], cfg["conditional"])
    G.load_state_dict(state["models"]["G"])
    samples = _fixed_latents(cfg["latent"])
    inputs = [TensorIO("latent", [cfg["latent"]])]
    base = {"dataset": FASHION, "epochs": state["epoch"], "run": ckpt.parent.name}
    if cfg["conditional"]:
        g = torch.Generator().manual_seed(99)
        samples = [s + [torch.randint(0, 10, (len(s[0]), 1), generator=g)] for s in samples]
        inputs.append(TensorIO("class_label", [1], "INT64"))
        task = TaskMetadata(
            kind=TaskKind.CONDITIONAL_GENERATOR,
            latent_size=cfg["latent"],
            num_classes=10,
            labels=common.FASHION_MNIST_LABELS,
            output_scaling=PIXEL_TANH,
            color_mode="grey",
        )
        name = "cdcgan"
        card = {
            **base,
            "title": name,
            "train_command": f"python -m training.gan.train --conditional --epochs {state['epoch']}",
            "what": "Class-conditional DCGAN generator: latent vector (standard normal) plus a class label "
            "(learned embedding, concatenated) to a 28x28 image; trained against a projection "
            "discriminator.",
        }
    else:
        task = TaskMetadata(
            kind=TaskKind.GENERATOR,
            latent_size=cfg["latent"],
            output_scaling=PIXEL_TANH,
            color_mode="grey",
        )
        name = "dcgan"
        card = {
            **base,
            "title": name,
            "train_command": f"python -m training.gan.train --epochs {state['epoch']}",
            "what": "DCGAN generator: latent vector (standard normal) to a 28x28 Fashion-MNIST-like image "
            "(linear to 128x7x7, two stride-2 transposed convs with BN/ReLU, tanh).",
        }
    return [
        export_model(
            G,
            name=name,
            models_dir=models_dir,
            inputs=inputs,
            outputs=[TensorIO("images", IMAGE_28)],
            samples=samples,
            task=task,
            max_batch_size=64,
            atol=1e-4,
            card=card,
        )
    ]


def export_sr(ckpt: Path, models_dir: Path, data_dir=None) -> list[dict]:
    from training.sr.model import ESPCN, ESPCNForExport

    state = common.load_checkpoint(ckpt)
    cfg = state["config"]
    scale = cfg["scale"]
    net = ESPCN(scale, tuple(cfg["features"]))
    net.load_state_dict(state["models"]["model"])
    g = torch.Generator().manual_seed(5)
    # Different spatial sizes for the two batches check the dynamic height/width too.
    samples = [[torch.rand(1, 1, 37, 23, generator=g)], [torch.rand(3, 1, 20, 31, generator=g)]]
    name = f"espcn_x{scale}"
    card = {
        "title": name,
        "epochs": state["epoch"],
        "run": ckpt.parent.name,
        "dataset": "148 photos (Sun-Hays 80 + BSD68) at scales 1.0/0.8/0.6, random 24x24 low-res "
        "patches with flips and rotations; evaluated on Set5 and Set14",
        "train_command": f"python -m training.sr.train --scale {scale} --epochs {state['epoch']}",
        "what": f"ESPCN x{scale} super-resolution on the Y channel: 5x5 and 3x3 convs "
        f"({'-'.join(map(str, cfg['features']))} channels) at low resolution, then a sub-pixel "
        "(pixel shuffle) layer, predicting the residual over a built-in bicubic upscale. Fully "
        "convolutional: any input height and width. Colour images: run Y through the model, "
        "upscale Cb/Cr with bicubic.",
    }
    io_dims = {2: "height", 3: "width"}
    return [
        export_model(
            ESPCNForExport(net),
            name=name,
            models_dir=models_dir,
            inputs=[
                TensorIO("low_res", [1, -1, -1], dynamic_names={2: "in_height", 3: "in_width"})
            ],
            outputs=[
                TensorIO(
                    "high_res",
                    [1, -1, -1],
                    dynamic_names={k: f"out_{v}" for k, v in io_dims.items()},
                )
            ],
            samples=samples,
            max_batch_size=8,
            atol=1e-4,
            card=card,
            task=TaskMetadata(
                kind=TaskKind.SUPER_RESOLUTION,
                upscale_factor=scale,
                input_scaling=PIXEL_01,
                output_scaling=PIXEL_01,
                color_mode="y",
            ),
        )
    ]


EXPORTERS = {
    "fashion_mlp": export_classifier,
    "fashion_cnn": export_classifier,
    "conv_autoencoder": export_autoencoder,
    "vae": export_vae,
    "dcgan": export_gan,
    "cdcgan": export_gan,
    "espcn_x2": export_sr,
    "espcn_x3": export_sr,
    "espcn_x4": export_sr,
}
# Model names that come out of a family's export, so `python -m export conv_encoder` works.
FAMILY_OF: dict[str, str] = {
    "conv_encoder": "conv_autoencoder",
    "conv_decoder": "conv_autoencoder",
    "vae_encoder": "vae",
    "vae_decoder": "vae",
}
