"""Pixel helpers shared by the server's task layer and the client (numpy and Pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Channels of an HxWxC uint8 image and the Pillow mode that holds them.
MODE_BY_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


def to_uint8(values: np.ndarray) -> np.ndarray:
    """0..255 floats to uint8, rounded and clipped."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def array_to_image(pixels: np.ndarray) -> Image.Image:
    """An HxWxC uint8 array (C 1, 3 or 4) as an image."""
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels,
                           MODE_BY_CHANNELS[pixels.shape[2]])


class RowCanvas:
    """An HxWxC uint8 image filled in bands of rows, as an upscale produces them."""

    def __init__(self, height: int, width: int, channels: int):
        self.pixels = np.empty((height, width, channels), np.uint8)

    def put(self, row_start: int, rows: np.ndarray) -> int:
        """Write `rows` (RxWxC) from `row_start`; returns the row after them."""
        end = row_start + rows.shape[0]
        self.pixels[row_start:end] = rows
        return end

    def image(self) -> Image.Image:
        return array_to_image(self.pixels)
