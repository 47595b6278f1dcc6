"""Shared pieces for every training script: data, seeds, the epoch loop, checkpoints, metrics, plots.

Data loading is plain numpy (the eval command reuses it without touching torch's data stack);
the rest works on torch tensors.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import shutil
import struct
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# The S3 website endpoint serves plain HTTP only.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNS = REPO_ROOT / "training" / "runs"


class DatasetMissingError(RuntimeError):
    """The idx files are nowhere to be found; the message says how to get them."""


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST / MNIST (idx format)


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (gzipped or not) into a numpy array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {array.size} bytes")
    return array.reshape(dims)


def _find_idx_dir(data_dir: Path | None, download: bool) -> Path:
    names = [n for pair in IDX_FILES.values() for n in pair]
    candidates = [data_dir] if data_dir is not None else []
    candidates.append(DEBIAN_FASHION_MNIST)
    for cand in candidates:
        if cand is not None and all((cand / n).exists() or (cand / n[:-3]).exists() for n in names):
            return cand
    target = data_dir or (Path.home() / ".cache" / "fashion-mnist")
    if download:
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                if not (target / name).exists():
                    tmp = target / (name + ".part")
                    with (
                        urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=30) as resp,
                        open(tmp, "wb") as out,
                    ):
                        shutil.copyfileobj(resp, out)
                    tmp.rename(target / name)
            return target
        except OSError as exc:
            reason = f"download from {FASHION_MNIST_URL} failed ({exc})"
    else:
        reason = "download disabled"
    looked = ", ".join(str(c) for c in candidates if c is not None)
    raise DatasetMissingError(
        f"Fashion-MNIST idx files not found (looked in {looked}; {reason}). Install them with "
        "`apt-get install -y dataset-fashion-mnist` or pass --data-dir pointing at a folder with "
        + ", ".join(names)
    )


def _resolve(folder: Path, name: str) -> Path:
    return folder / name if (folder / name).exists() else folder / name[:-3]


def load_mnist_like(
    split: str, data_dir: str | Path | None = None, download: bool = True, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of `split` ('train' or 'test').

    Looks in `data_dir`, then Debian's `/usr/share/datasets/fashion-mnist/`, then downloads.
    MNIST files work too: the format is identical.
    """
    folder = _find_idx_dir(Path(data_dir) if data_dir else None, download)
    image_name, label_name = IDX_FILES[split]
    images = read_idx(_resolve(folder, image_name))
    labels = read_idx(_resolve(folder, label_name)).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels in {split}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


# ---------------------------------------------------------------------------------------------
# Super-resolution images

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def list_images(folder: str | Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no PNG/JPEG images found in {folder}")
    return paths


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array in [0, 255] (float), in [16, 235] like MATLAB's rgb2ycbcr."""
    rgb = rgb.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def load_y(path: Path) -> np.ndarray:
    """Y channel (float64 in [0, 255]) of an image file; grey files are replicated to RGB first."""
    from PIL import Image

    with Image.open(path) as img:
        return rgb_to_y(np.asarray(img.convert("RGB")))


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def bicubic_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float [0, 255] single-channel array to (width, height), as PIL does it.

    PIL's bicubic downscale is antialiased like MATLAB's imresize, the usual reference.
    """
    from PIL import Image

    return np.asarray(
        Image.fromarray(image.astype(np.float32), mode="F").resize(size, Image.BICUBIC),
        dtype=np.float64,
    )


def sr_pair(hr_y: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(low-res, high-res) Y pair in [0, 255] by the standard protocol: mod-crop the ground truth,
    bicubic-downscale it; the low-res one is rounded like an 8-bit image."""
    hr = modcrop(hr_y, scale)
    h, w = hr.shape
    lr = np.clip(np.rint(bicubic_resize(hr, (w // scale, h // scale))), 0, 255)
    return lr, hr


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0, border: int = 0) -> float:
    """Peak signal-to-noise ratio in dB; `border` pixels are cropped from every side first."""
    if border:
        a = a[border:-border, border:-border]
        b = b[border:-border, border:-border]
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * np.log10(peak * peak / mse)


# ---------------------------------------------------------------------------------------------
# Torch helpers (imported lazily so data-only users need no torch)


def setup(seed: int, threads: int = 2):
    """Seed every RNG, cap CPU threads, and return the device (CUDA when present)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensor_images(images: np.ndarray, device=None, mean: float = 0.0, std: float = 1.0):
    """uint8 [N, H, W] -> float [N, 1, H, W] as (pixel/255 - mean)/std."""
    import torch

    x = (
        torch.from_numpy(np.ascontiguousarray(images).copy())
        .to(device=device, dtype=torch.float32)
        .div_(255.0)
        .unsqueeze(1)
    )
    return (x - mean) / std


def batches(
    n: int, batch_size: int, shuffle: bool, generator=None, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Index batches over range(n); in-memory data needs no DataLoader and its worker overhead."""
    import torch

    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def progress(iterable: Iterable, total: int, desc: str, quiet: bool = False):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, disable=quiet, mininterval=5.0)


@dataclass
class RunDir:
    """One training run's folder: checkpoint, metrics CSV, pictures."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"


def save_checkpoint(
    path: Path,
    *,
    models: dict,
    optimizers: dict,
    epoch: int,
    config: dict,
    extra: dict | None = None,
    schedulers: dict | None = None,
) -> None:
    """State dicts (never pickled modules) plus the arguments that rebuild the networks."""
    import torch

    state = {
        "epoch": epoch,
        "config": config,
        "models": {k: m.state_dict() for k, m in models.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "extra": extra or {},
        "rng": torch.get_rng_state(),
    }
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a torn checkpoint


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def resume(path: Path, models: dict, optimizers: dict, schedulers: dict | None = None) -> int:
    """Restore a run from `path` if it exists; returns the epoch to start from."""
    import torch

    if not Path(path).exists():
        return 0
    state = load_checkpoint(path)
    for k, m in models.items():
        m.load_state_dict(state["models"][k])
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in (schedulers or {}).items():
        if k in state["schedulers"]:
            s.load_state_dict(state["schedulers"][k])
    torch.set_rng_state(state["rng"])
    print(f"resumed from {path} at epoch {state['epoch']}")
    return int(state["epoch"])


def anneal_rest(optimizer, remaining_steps: int, floor: float = 0.01):
    """Cosine decay from the current LR over `remaining_steps`, for a run resumed with more epochs.

    The saved schedule was sized for the old epoch count (OneCycleLR refuses to step past it).
    """
    import torch

    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # the scheduler would otherwise restart from the peak LR
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(remaining_steps, 1), eta_min=optimizer.param_groups[0]["lr"] * floor
    )


class MetricsLog:
    """Appends one CSV row per epoch; survives resumes (rows of later epochs are dropped)."""

    def __init__(self, path: Path, start_epoch: int = 0) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []
        if start_epoch and self.path.exists():
            with open(self.path) as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= start_epoch]
        elif self.path.exists():
            self.path.unlink()
        self._t0 = time.monotonic()
        self._offset = float(self.rows[-1]["wall_s"]) if self.rows else 0.0

    def log(self, epoch: int, **values: float) -> None:
        row = {"epoch": epoch, "wall_s": round(self._offset + time.monotonic() - self._t0, 1)}
        row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()})
        self.rows.append(row)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["epoch"]), float(r[key])) for r in self.rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(
    log: MetricsLog, keys: list[str], path: Path, title: str, ylabel: str = "loss"
) -> None:
    """Loss (or metric) curves per epoch as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    for key in keys:
        xs, ys = log.series(key)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_grid(
    images: np.ndarray, path: Path, nrow: int, scale: int = 1, row_labels: list[str] | None = None
) -> None:
    """Tile uint8 [N, H, W] grey images into one PNG (1-pixel gaps)."""
    from PIL import Image

    n, h, w = images.shape
    ncol = nrow
    nrows = (n + ncol - 1) // ncol
    canvas = np.full((nrows * (h + 1) + 1, ncol * (w + 1) + 1), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    pic = Image.fromarray(canvas)
    if scale > 1:
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)
    pic.save(path, optimize=True)


def to_uint8(x, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """Float images [N, 1, H, W] normalised as (p/255 - mean)/std back to uint8 [N, H, W]."""
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, np.float64)
    arr = (arr * std + mean) * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8).reshape(arr.shape[0], *arr.shape[-2:])


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def timed(fn: Callable) -> tuple[object, float]:
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0
