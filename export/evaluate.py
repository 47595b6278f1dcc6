"""Evaluate every bundled model through ONNX Runtime and write the table, pictures and model cards.

    python -m export.evaluate                        # all of models/, writes models/EVAL.md
    python -m export.evaluate --only espcn_x3 fashion_cnn --sr-dir ../shared/data/sr/test

Per task kind: classifiers -> test accuracy; autoencoders -> test MSE per pixel; encoder/decoder
pairs -> round-trip MSE; generators -> Frechet distance on the bundled CNN's penultimate
features against the test set (+ class consistency for conditional ones); super-resolution ->
PSNR on Set5/Set14 (Y channel, bicubic-downscaled input, `scale` border pixels cropped) with
bicubic beside it. Also CPU latency at batch 1 and 64 (8 for super-resolution). No torch needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.config import (
    CONFIG_FILENAME,
    PixelScaling,
    ModelConfig,
    TaskKind,
    load_model_config,
)
from training import common

SR_TEST = common.REPO_ROOT.parent / "shared" / "data" / "sr" / "test"
FEATURE_MODEL = "fashion_cnn"

# Quality bars from the issue: (metric key, minimum).
BARS: dict[str, list[tuple[str, float]]] = {
    "fashion_mlp": [("test_accuracy", 0.900)],
    "fashion_cnn": [("test_accuracy", 0.935)],
    "cdcgan": [("class_consistency", 0.85)],
    "espcn_x2": [("psnr_Set5", 36.0), ("psnr_Set14", 31.8)],
    "espcn_x3": [("psnr_Set5", 32.3), ("psnr_Set14", 28.9)],
    "espcn_x4": [("psnr_Set5", 30.1), ("psnr_Set14", 27.2)],
}
SIZE_BARS = {"fashion_cnn": 2 * 1024 * 1024}


# ---------------------------------------------------------------------------------------------
# Metrics on plain arrays (unit-tested)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1 = np.cov(a, rowvar=False)
    s2 = np.cov(b, rowvar=False)
    # Tr sqrt(S1 S2) = Tr sqrt(sqrt(S1) S2 sqrt(S1)); the inner matrix is symmetric PSD, so eigh.
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = float(np.sum(np.sqrt(np.clip(inner, 0, None))))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def class_consistency(probabilities: np.ndarray, requested: np.ndarray) -> float:
    """Share of generated samples the classifier assigns to the class they were generated for."""
    return float(np.mean(np.argmax(probabilities, axis=1) == np.asarray(requested).reshape(-1)))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def pixels_to_input(pixels: np.ndarray, s: PixelScaling) -> np.ndarray:
    """uint8 [N, H, W] -> FP32 [N, 1, H, W] as (pixel * scale - mean) / std."""
    return ((pixels.astype(np.float32) * s.scale - s.mean) / s.std)[:, None].astype(np.float32)


def output_to_pixels(out: np.ndarray, s: PixelScaling) -> np.ndarray:
    """Inverse mapping for image outputs: pixel = (out * std + mean) / scale, as float."""
    return (out.astype(np.float64) * s.std + s.mean) / s.scale


# ---------------------------------------------------------------------------------------------
# ONNX Runtime plumbing


@dataclass
class Bundled:
    name: str
    config: ModelConfig
    path: Path
    session: ort.InferenceSession
    metrics: dict = field(default_factory=dict)
    pictures: list[str] = field(default_factory=list)

    def run(self, feeds: dict[str, np.ndarray], batch: int = 500) -> list[np.ndarray]:
        """Run in chunks of `batch` rows and concatenate (keeps memory flat on 10k images)."""
        n = len(next(iter(feeds.values())))
        names = [o.name for o in self.config.outputs]
        chunks = [
            self.session.run(names, {k: v[i : i + batch] for k, v in feeds.items()})
            for i in range(0, n, batch)
        ]
        return [np.concatenate([c[j] for c in chunks]) for j in range(len(names))]


def open_model(model_dir: Path, threads: int) -> Bundled:
    config = load_model_config(model_dir / CONFIG_FILENAME)
    version = max(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    path = model_dir / str(version) / config.model_filename
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return Bundled(model_dir.name, config, path, session)


def latency_ms(
    model: Bundled, batch: int, hw: tuple[int, int] | None = None, repeats: int = 20
) -> float:
    """Median wall time of one session run at `batch` (random inputs of the declared shape)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in model.config.inputs:
        shape = [batch] + [max(0, d) for d in spec.shape]
        if hw is not None:
            shape[-2:] = hw
        if spec.datatype == "INT64":
            feeds[spec.name] = rng.integers(0, model.config.task.num_classes or 1, shape).astype(
                np.int64
            )
        else:
            feeds[spec.name] = rng.random(shape, dtype=np.float32)
    names = [o.name for o in model.config.outputs]
    model.session.run(names, feeds)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.session.run(names, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


# ---------------------------------------------------------------------------------------------
# Per-kind evaluations


@dataclass
class Context:
    models: dict[str, Bundled]
    test_images: np.ndarray
    test_labels: np.ndarray
    sr_dir: Path
    n_generated: int
    _test_features: np.ndarray | None = None

    @property
    def feature_model(self) -> Bundled | None:
        return self.models.get(FEATURE_MODEL)

    def features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, penultimate features) of uint8 images under the bundled CNN."""
        cnn = self.feature_model
        probs, feats = cnn.run({"images": pixels_to_input(pixels, cnn.config.task.input_scaling)})
        return probs, feats

    def test_features(self) -> np.ndarray:
        if self._test_features is None:
            self._test_features = self.features(self.test_images)[1]
        return self._test_features


def eval_classifier(m: Bundled, ctx: Context) -> None:
    probs = m.run(
        {m.config.inputs[0].name: pixels_to_input(ctx.test_images, m.config.task.input_scaling)}
    )[0]
    m.metrics["test_accuracy"] = accuracy(probs, ctx.test_labels)


def _reconstruct_mse(out: np.ndarray, pixels: np.ndarray, scaling: PixelScaling) -> float:
    recon = np.clip(output_to_pixels(out, scaling), 0, 255) / 255.0
    return float(np.mean((recon[:, 0] - pixels / 255.0) ** 2))


def eval_autoencoder(m: Bundled, ctx: Context) -> None:
    t = m.config.task
    out = m.run({m.config.inputs[0].name: pixels_to_input(ctx.test_images, t.input_scaling)})[0]
    m.metrics["test_mse_per_pixel"] = _reconstruct_mse(out, ctx.test_images, t.output_scaling)
    per_image = np.mean(
        (
            np.clip(output_to_pixels(out, t.output_scaling), 0, 255)[:, 0] / 255.0
            - ctx.test_images / 255.0
        )
        ** 2,
        axis=(1, 2),
    )
    # Anomaly-score view: how the per-image error spreads.
    m.metrics["test_mse_p99_image"] = float(np.quantile(per_image, 0.99))
    pics = np.concatenate(
        [
            ctx.test_images[:16],
            np.clip(np.rint(output_to_pixels(out[:16], t.output_scaling)), 0, 255).astype(np.uint8)[
                :, 0
            ],
        ]
    )
    common.save_grid(pics, m.path.parent.parent / "reconstructions.png", nrow=16, scale=2)
    m.pictures.append("reconstructions.png")


def eval_encoder_decoder(m: Bundled, ctx: Context) -> None:
    """Round trip through the encoder/decoder pair (conv_encoder + conv_decoder, ...)."""
    if m.config.task.kind is TaskKind.ENCODER:
        enc, dec = m, ctx.models.get(m.name.replace("encoder", "decoder"))
    else:
        enc, dec = ctx.models.get(m.name.replace("decoder", "encoder")), m
    if enc is None or dec is None:
        return
    latent = enc.run(
        {enc.config.inputs[0].name: pixels_to_input(ctx.test_images, enc.config.task.input_scaling)}
    )[0]
    out = dec.run({dec.config.inputs[0].name: latent.astype(np.float32)})[0]
    m.metrics["round_trip_test_mse_per_pixel"] = _reconstruct_mse(
        out, ctx.test_images, dec.config.task.output_scaling
    )
    m.metrics["latent_mean_abs"] = float(np.mean(np.abs(latent)))


def eval_generator(m: Bundled, ctx: Context) -> None:
    t = m.config.task
    rng = np.random.default_rng(2024)
    n = ctx.n_generated
    feeds = {"latent": rng.standard_normal((n, t.latent_size)).astype(np.float32)}
    requested = None
    if t.kind is TaskKind.CONDITIONAL_GENERATOR:
        requested = np.repeat(np.arange(t.num_classes), n // t.num_classes)
        feeds = {
            "latent": feeds["latent"][: len(requested)],
            "class_label": requested[:, None].astype(np.int64),
        }
    out = m.run(feeds)[0]
    pixels = np.clip(np.rint(output_to_pixels(out, t.output_scaling)), 0, 255).astype(np.uint8)[
        :, 0
    ]
    if ctx.feature_model is not None:
        probs, feats = ctx.features(pixels)
        m.metrics["frechet_distance_cnn"] = frechet_distance(feats, ctx.test_features())
        if requested is not None:
            m.metrics["class_consistency"] = class_consistency(probs, requested)
            m.metrics["class_consistency_worst_class"] = min(
                class_consistency(probs[requested == c], requested[requested == c])
                for c in range(t.num_classes)
            )
    if requested is not None:
        per = n // t.num_classes
        grid = np.concatenate([pixels[c * per : c * per + 10] for c in range(t.num_classes)])
        common.save_grid(grid, m.path.parent.parent / "samples.png", nrow=10, scale=2)
    else:
        common.save_grid(pixels[:100], m.path.parent.parent / "samples.png", nrow=10, scale=2)
    m.pictures.append("samples.png")


def eval_super_resolution(m: Bundled, ctx: Context) -> None:
    scale = m.config.task.upscale_factor
    s_in, s_out = m.config.task.input_scaling, m.config.task.output_scaling
    for subset in ("Set5", "Set14"):
        folder = ctx.sr_dir / subset
        if not folder.exists():
            continue
        ours, bic = [], []
        for path in common.list_images(folder):
            lr, hr = common.sr_pair(common.load_y(path), scale)
            x = ((lr * s_in.scale - s_in.mean) / s_in.std).astype(np.float32)[None, None]
            out = m.session.run([m.config.outputs[0].name], {m.config.inputs[0].name: x})[0][0, 0]
            sr = np.clip(output_to_pixels(out, s_out), 0, 255)
            ours.append(common.psnr(sr, hr, border=scale))
            up = np.clip(common.bicubic_resize(lr, (hr.shape[1], hr.shape[0])), 0, 255)
            bic.append(common.psnr(up, hr, border=scale))
        m.metrics[f"psnr_{subset}"] = float(np.mean(ours))
        m.metrics[f"bicubic_psnr_{subset}"] = float(np.mean(bic))
    crop_picture(m, ctx.sr_dir / "Set14" / "comic.png", m.path.parent.parent / "sr_crops.png")
    m.pictures.append("sr_crops.png")


def crop_picture(m: Bundled, image_path: Path, out_path: Path, size: int = 96) -> None:
    """Side by side: bicubic | model | ground truth, on a colour crop (chroma upscaled by bicubic)."""
    from PIL import Image

    if not image_path.exists():
        return
    scale = m.config.task.upscale_factor
    with Image.open(image_path) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    rgb = rgb.crop((0, 0, w - w % scale, h - h % scale))
    small = rgb.resize((rgb.width // scale, rgb.height // scale), Image.BICUBIC)
    bicubic = small.resize(rgb.size, Image.BICUBIC)
    y, cb, cr = small.convert("YCbCr").split()
    x = (np.asarray(y, np.float32) / 255.0)[None, None]
    out = m.session.run([m.config.outputs[0].name], {m.config.inputs[0].name: x})[0][0, 0]
    y_up = Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))
    model_rgb = Image.merge(
        "YCbCr", (y_up, cb.resize(rgb.size, Image.BICUBIC), cr.resize(rgb.size, Image.BICUBIC))
    ).convert("RGB")
    cx, cy = rgb.width // 2 - size // 2, rgb.height // 2 - size // 2
    box = (cx, cy, cx + size, cy + size)
    tiles = [
        im.crop(box).resize((size * 2, size * 2), Image.NEAREST) for im in (bicubic, model_rgb, rgb)
    ]
    canvas = Image.new("RGB", (3 * size * 2 + 8, size * 2), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * (size * 2 + 4), 0))
    canvas.save(out_path, optimize=True)


EVALUATORS = {
    TaskKind.CLASSIFIER: eval_classifier,
    TaskKind.AUTOENCODER: eval_autoencoder,
    TaskKind.ENCODER: eval_encoder_decoder,
    TaskKind.DECODER: eval_encoder_decoder,
    TaskKind.GENERATOR: eval_generator,
    TaskKind.CONDITIONAL_GENERATOR: eval_generator,
    TaskKind.SUPER_RESOLUTION: eval_super_resolution,
}


# ---------------------------------------------------------------------------------------------
# Reporting


def check_bars(m: Bundled) -> list[str]:
    """Failed quality bars, as readable strings (empty when every bar is met)."""
    failed = [
        f"{key} {m.metrics.get(key, float('nan')):.4g} < {minimum}"
        for key, minimum in BARS.get(m.name, [])
        if not m.metrics.get(key, -np.inf) >= minimum
    ]
    limit = SIZE_BARS.get(m.name)
    if limit and m.path.stat().st_size > limit:
        failed.append(f"file {m.path.stat().st_size} B > {limit} B")
    return failed


def _fmt(key: str, v: float) -> str:
    if "accuracy" in key or "consistency" in key:
        return f"{100 * v:.2f}%"
    if "psnr" in key:
        return f"{v:.2f} dB"
    if "mse" in key:
        return f"{v:.5f}"
    if "latency" in key:
        return f"{v:.2f} ms"
    return f"{v:.3f}"


def metric_text(metrics: dict) -> str:
    return ", ".join(f"{k} {_fmt(k, v)}" for k, v in metrics.items() if not k.startswith("latency"))


def write_table(models: list[Bundled], path: Path, command: str) -> None:
    lines = [
        "# Evaluation of the bundled models (ONNX Runtime, CPU)",
        "",
        f"Made by `{command}`. Latency: median of 20 session runs, 2 intra-op threads.",
        "",
        "| model | kind | metrics | size | latency b1 | latency b64 (SR: b8, 128x128 in) | bars |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in models:
        failed = check_bars(m)
        bars = (
            "n/a"
            if m.name not in BARS and m.name not in SIZE_BARS
            else ("pass" if not failed else "FAIL: " + "; ".join(failed))
        )
        lines.append(
            f"| {m.name} | {m.config.task.kind.value} | {metric_text(m.metrics)} | "
            f"{m.path.stat().st_size / 1024:.0f} KiB | {m.metrics.get('latency_b1_ms', 0):.2f} ms | "
            f"{m.metrics.get('latency_bmax_ms', 0):.2f} ms | {bars} |"
        )
    by_name = {m.name: m for m in models}
    variants = []
    for m in models:
        made = variant_of(m.path.parent.parent)
        if made and made[0] in by_name:
            variants.append((m, *made))
    if variants:
        lines += [
            "",
            "## Variants against their float model",
            "",
            "Same test data, same provider (CPU), which runs the fp16 graphs with its own fp16 "
            "kernels (slower than fp32 on a CPU without fp16 arithmetic, see the latencies above). "
            "The CUDA provider's fp16 kernels round differently; `make gpu-check` compares them "
            "with the CPU provider's outputs.",
            "",
            "| variant | made from | how | change |",
            "|---|---|---|---|",
        ]
        for m, base, how in variants:
            change = ", ".join(metric_deltas(m.metrics, by_name[base].metrics)) or "n/a"
            lines.append(f"| {m.name} | {base} | {how} | {change} |")
    path.write_text("\n".join(lines) + "\n")


# Variants made from a float model, by the card key naming it: how they were made.
VARIANT_KEYS = {"quantized_from": "Quantized (int8)", "converted_from": "Converted to fp16"}
# Metrics compared between a variant and its float model.
DELTA_KEYS = ("test_accuracy", "psnr_Set5", "psnr_Set14")


def variant_of(model_dir: Path) -> tuple[str, str] | None:
    """(float model, how the variant was made) from the card, or None for a model of its own."""
    card_path = model_dir / "card.json"
    export = json.loads(card_path.read_text()).get("export", {}) if card_path.exists() else {}
    for key, how in VARIANT_KEYS.items():
        if key in export:
            return export[key], how
    return None


def _delta(key: str, variant: float, base: float) -> str:
    if "accuracy" in key:
        return f"{key} {100 * (variant - base):+.2f} points"
    return f"{key} {variant - base:+.4f} dB"


def metric_deltas(metrics: dict, base: dict) -> list[str]:
    return [_delta(k, metrics[k], base[k]) for k in DELTA_KEYS if k in metrics and k in base]


def _variant_note(m: Bundled, base: str, how: str, model_dir: Path) -> str:
    """Quality and latency change against the float model the variant came from."""
    stored = model_dir.parent / base / "metrics.json"
    if not stored.exists():
        return f"- {how} from `{base}`."
    ref = json.loads(stored.read_text())
    parts = [f"- {how} from `{base}`", *metric_deltas(m.metrics, ref)]
    for key, label in (("latency_b1_ms", "batch 1"), ("latency_bmax_ms", "batch 64")):
        if key in ref and m.metrics.get(key):
            parts.append(f"{label} latency {ref[key]:.2f} -> {m.metrics[key]:.2f} ms")
    return "; ".join(parts) + " (float model measured in the same eval run when both are selected)."


def write_card(m: Bundled, model_dir: Path, command: str) -> None:
    """models/<name>/README.md from card.json (written at export) plus the measured metrics."""
    card_path = model_dir / "card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    export = card.get("export", {})
    cfg = m.config
    sig_in = ", ".join(f"`{t.name}` {t.datatype} {t.shape}" for t in cfg.inputs)
    sig_out = ", ".join(f"`{t.name}` {t.datatype} {t.shape}" for t in cfg.outputs)
    bmax = 8 if cfg.task.kind is TaskKind.SUPER_RESOLUTION else 64
    variant = variant_of(model_dir)
    lines = [
        f"# {m.name}",
        "",
        card.get("what", ""),
        "",
        (
            f"- Task kind: `{cfg.task.kind.value}`; inputs {sig_in}; outputs {sig_out} "
            f"(batch axis implicit, max batch {cfg.max_batch_size})."
        ),
        f"- Dataset: {card.get('dataset', 'n/a')}.",
        f"- Training command: `{card.get('train_command', 'n/a')}` ({card.get('epochs', '?')} epochs)"
        + (f", then `python -m export {m.name}`." if variant is None else "."),
        (
            f"- Parameters: {export.get('parameters', 'n/a'):,}; "
            f"ONNX file: {m.path.stat().st_size / 1024:.0f} KiB (opset {export.get('opset', '?')})."
        ),
        *([] if not export.get("parity_max_abs_diff") else [
            f"- Export parity (max |{'fp16 - fp32' if variant else 'ORT - PyTorch'}|, tolerance "
            f"{export.get('parity_tolerance', '?')}): "
            + ", ".join(f"{k} {v:.1e}" for k, v in export["parity_max_abs_diff"].items()) + "."]),
        *([_variant_note(m, *variant, model_dir)] if variant else []),
        "",
        f"## Quality (measured by `{command}`)",
        "",
    ]
    lines += [f"- {k}: {_fmt(k, v)}" for k, v in m.metrics.items() if not k.startswith("latency")]
    failed = check_bars(m)
    if m.name in BARS or m.name in SIZE_BARS:
        lines.append(
            f"- Quality bars: {'all met' if not failed else 'NOT met: ' + '; '.join(failed)}"
        )
    lines += [
        "",
        "## CPU latency (ONNX Runtime, 2 threads, median of 20 runs)",
        "",
        f"- batch 1: {m.metrics.get('latency_b1_ms', 0):.2f} ms; batch {bmax}: "
        f"{m.metrics.get('latency_bmax_ms', 0):.2f} ms"
        + (" (128x128 low-res input)" if cfg.task.kind is TaskKind.SUPER_RESOLUTION else ""),
    ]
    pictures = [f"![{p}]({p})" for p in dict.fromkeys(m.pictures)]
    run = common.DEFAULT_RUNS / card.get("run", "-")
    if run.is_dir():  # training pictures: loss curves, latent map, per-epoch samples
        pictures += [
            f"![training: {p.stem}](../../training/runs/{run.name}/{p.name})"
            for p in sorted(run.glob("*.png"))
        ]
    if pictures:
        lines += ["", "## Pictures", ""]
        if m.config.task.kind is TaskKind.CONDITIONAL_GENERATOR:
            lines += ["`samples.png`: one row per class, in label order.", ""]
        if m.config.task.kind is TaskKind.SUPER_RESOLUTION:
            lines += [
                "`sr_crops.png`: bicubic | this model | ground truth (Set14 comic, centre crop, 2x zoom).",
                "",
            ]
        lines += pictures
    (model_dir / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models-dir", default="models")
    p.add_argument("--only", nargs="*", default=None, help="model names (default: all)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx folder")
    p.add_argument("--sr-dir", default=str(SR_TEST), help="folder holding Set5/ and Set14/")
    p.add_argument(
        "--generated", type=int, default=10000, help="samples per generator (FD, consistency)"
    )
    p.add_argument(
        "--test-limit", type=int, default=None, help="first N test images only (smoke tests)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-cards", action="store_true", help="do not rewrite README.md/EVAL.md")
    args = p.parse_args(argv)
    root = Path(args.models_dir)
    dirs = sorted(d for d in root.iterdir() if (d / CONFIG_FILENAME).exists())
    models = {d.name: open_model(d, args.threads) for d in dirs}
    images, labels = common.load_mnist_like("test", args.data_dir, limit=args.test_limit)
    ctx = Context(models, images, labels, Path(args.sr_dir), args.generated)
    chosen = [models[n] for n in (args.only or models)]
    command = "python -m export.evaluate" + (f" --only {' '.join(args.only)}" if args.only else "")
    for m in chosen:
        t0 = time.monotonic()
        EVALUATORS[m.config.task.kind](m, ctx)
        if not args.no_latency:
            sr = m.config.task.kind is TaskKind.SUPER_RESOLUTION
            hw = (128, 128) if sr else None
            m.metrics["latency_b1_ms"] = latency_ms(m, 1, hw)
            m.metrics["latency_bmax_ms"] = latency_ms(
                m, 8 if sr else 64, hw, repeats=10 if sr else 20
            )
        print(f"{m.name}: {metric_text(m.metrics)} ({time.monotonic() - t0:.0f} s)", flush=True)
        (m.path.parent.parent / "metrics.json").write_text(json.dumps(m.metrics, indent=2) + "\n")
        if not args.no_cards:
            write_card(m, m.path.parent.parent, command)
    for m in models.values():
        stored = m.path.parent.parent / "metrics.json"
        if m not in chosen and stored.exists():  # keep earlier measurements in the full table
            m.metrics = json.loads(stored.read_text())
            m.pictures = [p.name for p in m.path.parent.parent.glob("*.png")]
    if not args.no_cards:
        write_table(list(models.values()), root / "EVAL.md", command)
    failed = {m.name: check_bars(m) for m in chosen if check_bars(m)}
    for name, why in failed.items():
        print(f"BAR NOT MET {name}: {'; '.join(why)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
