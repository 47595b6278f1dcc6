"""The eval's metrics on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.evaluate import (
    accuracy,
    class_consistency,
    frechet_distance,
    output_to_pixels,
    pixels_to_input,
)
from service.core.config import PixelScaling
from training import common
from training.sr.model import ESPCN, bicubic_polyphase


def test_frechet_distance_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(2000, 8))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_shifted_gaussians_is_squared_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4)) + np.array([3.0, 0, 0, 0])
    assert frechet_distance(a, b) == pytest.approx(9.0, rel=0.05)


def test_frechet_distance_of_scaled_gaussians():
    # N(0, I) vs N(0, 4I) in d dims: d * (1 + 4 - 2 * 2) = d.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50000, 3)), 2 * rng.normal(size=(50000, 3))
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.05)


def test_class_consistency_of_perfect_and_wrong_generators():
    requested = np.repeat(np.arange(10), 5)
    perfect = np.eye(10)[requested]
    assert class_consistency(perfect, requested) == 1.0
    assert class_consistency(np.eye(10)[(requested + 1) % 10], requested) == 0.0
    assert class_consistency(perfect, requested[:, None]) == 1.0  # [N, 1] labels as the model takes


def test_accuracy():
    probs = np.eye(3)[[0, 1, 2, 2]]
    assert accuracy(probs, np.array([0, 1, 2, 0])) == 0.75


@pytest.mark.parametrize(
    "scaling",
    [
        PixelScaling(),
        PixelScaling(scale=1 / 255, mean=0.5, std=0.5),
        PixelScaling(scale=1 / 255, mean=0.286, std=0.353),
    ],
)
def test_scaling_round_trip(scaling):
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = pixels_to_input(pixels, scaling)
    assert x.shape == (1, 1, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(output_to_pixels(x, scaling)[:, 0], pixels, atol=1e-3)


def test_psnr_of_identical_images_is_infinite():
    img = np.random.default_rng(0).uniform(0, 255, (20, 20))
    assert common.psnr(img, img, border=3) == float("inf")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_untrained_espcn_is_bicubic(scale):
    """The built-in bicubic skip matches PIL's bicubic upscale to within a grey level."""
    rng = np.random.default_rng(scale)
    lr = rng.uniform(0, 255, (12, 10)).round()
    ours = (
        ESPCN(scale)(torch.tensor(lr / 255, dtype=torch.float32)[None, None])[0, 0].detach().numpy()
        * 255
    )
    pil = common.bicubic_resize(lr, (10 * scale, 12 * scale))
    # Interior only: PIL's border handling differs, and the eval crops the border anyway.
    inner = slice(2 * scale, -2 * scale)
    assert np.abs(ours[inner, inner] - pil[inner, inner]).max() < 3.0
    assert bicubic_polyphase(scale).sum(dim=(1, 2, 3)).allclose(torch.ones(scale * scale))
