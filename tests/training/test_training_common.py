"""Unit tests of the shared data/metric helpers on known inputs."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from training import common


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    for img_name, lbl_name in common.IDX_FILES.values():
        _write_idx(folder / img_name, images)
        _write_idx(folder / lbl_name, labels)
    return images, labels


def test_idx_loader_reads_data_dir_first(tmp_path):
    images, labels = _fake_mnist(tmp_path)
    got_x, got_y = common.load_mnist_like("train", tmp_path, download=False)
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, labels.astype(np.int64))
    assert common.load_mnist_like("test", tmp_path, download=False, limit=2)[0].shape == (2, 28, 28)


def test_idx_loader_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="unsigned-byte"):
        common.read_idx(path)


def test_missing_dataset_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(
        common.DatasetMissingError, match="apt-get install -y dataset-fashion-mnist"
    ):
        common.load_mnist_like("train", tmp_path / "empty", download=False)


def test_psnr_known_values():
    a = np.full((8, 8), 100.0)
    assert common.psnr(a, a) == float("inf")
    b = a + 1.0  # MSE 1 -> 20 log10(255)
    assert common.psnr(a, b) == pytest.approx(20 * np.log10(255.0))
    c = b.copy()
    c[0, :] = 0  # damage only the border row
    assert common.psnr(a, c, border=1) == pytest.approx(20 * np.log10(255.0))


def test_rgb_to_y_bt601_range():
    rgb = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    np.testing.assert_allclose(common.rgb_to_y(rgb), [[16.0, 235.0]], atol=1e-9)


def test_sr_pair_shapes_follow_modcrop():
    hr = np.random.default_rng(1).uniform(16, 235, (31, 50))
    lr, hr_c = common.sr_pair(hr, 3)
    assert hr_c.shape == (30, 48) and lr.shape == (10, 16)
    assert np.all(lr == np.rint(lr))


def test_save_grid_and_to_uint8(tmp_path):
    x = np.linspace(-1, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)
    pixels = common.to_uint8(x, mean=0.5, std=0.5)
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255
    common.save_grid(pixels, tmp_path / "g.png", nrow=2)
    assert (tmp_path / "g.png").stat().st_size > 0
