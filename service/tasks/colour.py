"""Colour handling for super-resolution: what goes through the network and how it comes back.

For `color_mode: y` the network sees ITU-R BT.601 luma in studio range (16..235), the convention of
the super-resolution literature (MATLAB's rgb2ycbcr) and of our training; chroma is bicubic-
upscaled. Grey images are luma only. For `rgb` all three channels go through the network. Alpha,
when present, is plainly resized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.tasks.pixels import to_uint8
from service.tasks.tiling import Window

# Rows of context around a strip when resizing chroma and alpha, beyond bicubic's 2-pixel support,
# so strips join without seams.
_MARGIN = 4

_TO_YCBCR = np.array([[65.481, 128.553, 24.966],
                      [-37.797, -74.203, 112.0],
                      [112.0, -93.786, -18.214]], np.float32) / 255.0
_OFFSET = np.array([16.0, 128.0, 128.0], np.float32)
_TO_RGB = np.linalg.inv(_TO_YCBCR).astype(np.float32)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 RGB (0..255) to HxWx3 studio-range YCbCr floats."""
    return rgb.astype(np.float32) @ _TO_YCBCR.T + _OFFSET


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    return (ycbcr.astype(np.float32) - _OFFSET) @ _TO_RGB.T


def upscaled_band(channel: Image.Image, row: Window, scale: int, rows: int) -> np.ndarray:
    """The rows of `channel` under `row`'s core, bicubic-upscaled by `scale`."""
    top = max(row.core_start - _MARGIN, 0)
    bottom = min(row.core_end + _MARGIN, channel.height)
    band = channel.crop((0, top, channel.width, bottom)).resize(
        (channel.width * scale, (bottom - top) * scale), Image.Resampling.BICUBIC)
    skip = (row.core_start - top) * scale
    return np.asarray(band)[skip:skip + rows]


@dataclass
class ColourPlan:
    """Network planes (CxHxW, 0..255 units) for one image, and how to rebuild output pixels."""

    planes: np.ndarray
    mode: str          # grey | y | rgb
    chroma: tuple[Image.Image, Image.Image] | None
    alpha: Image.Image | None
    description: str

    @property
    def channels(self) -> int:
        return 4 if self.alpha is not None else (1 if self.mode == "grey" else 3)

    def finish(self, network: np.ndarray, row: Window, scale: int) -> np.ndarray:
        """Network output rows (CxHxW floats, 0..255 units) to HxWxC uint8 pixels."""
        rows = network.shape[1]
        if self.mode == "rgb":
            pixels = network.transpose(1, 2, 0)
        elif self.chroma is not None:
            cb, cr = (upscaled_band(c, row, scale, rows) for c in self.chroma)
            pixels = ycbcr_to_rgb(np.stack([network[0], cb, cr], axis=-1))
        else:  # grey: studio-range luma back to full range
            pixels = ((network[0] - 16.0) * (255.0 / 219.0))[:, :, None]
        pixels = to_uint8(pixels)
        if self.alpha is not None:
            if pixels.shape[2] == 1:
                pixels = np.repeat(pixels, 3, axis=2)  # grey with alpha goes out as RGBA
            alpha = upscaled_band(self.alpha, row, scale, rows)[:, :, None]
            pixels = np.concatenate([pixels, alpha], axis=2)
        return pixels


def plan_colour(picture: Image.Image, color_mode: str) -> ColourPlan:
    alpha = picture.getchannel("A") if picture.mode == "RGBA" else None
    base = picture.convert("RGB") if picture.mode == "RGBA" else picture
    if color_mode == "rgb":
        planes = np.asarray(base.convert("RGB"), np.float32).transpose(2, 0, 1)
        return ColourPlan(planes, "rgb", None, alpha, "RGB through the network")
    if base.mode == "L":
        luma = 16.0 + np.asarray(base, np.float32) * (219.0 / 255.0)
        return ColourPlan(luma[None], "grey", None, alpha, "grey through the network")
    if color_mode == "grey":
        grey = np.asarray(base.convert("L"), np.float32)
        return ColourPlan((16.0 + grey * (219.0 / 255.0))[None], "grey", None, alpha,
                          "converted to grey")
    ycbcr = rgb_to_ycbcr(np.asarray(base.convert("RGB")))
    chroma = tuple(Image.fromarray(to_uint8(ycbcr[:, :, i])) for i in (1, 2))
    return ColourPlan(ycbcr[:, :, 0][None], "y", chroma, alpha,
                      "Y (BT.601) through the network, CbCr bicubic")
