"""Overlapping tiles for fully convolutional models on large images.

Every window along an axis has the same length, so the tiles of one row stack into one batch. Each
window computes its core; the core keeps `overlap` pixels of real context from the window's inner
edges, so when `overlap` covers the network's receptive field the tiled result equals the untiled
one away from the image borders.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    start: int       # window [start, start + length) is what the model sees
    length: int
    core_start: int  # [core_start, core_end) is what this window contributes to the output
    core_end: int


def tile_windows(size: int, tile: int, overlap: int) -> list[Window]:
    """Windows covering [0, size): cores of `tile` pixels, windows of tile + 2 * overlap pixels
    (or the whole axis when shorter), shifted inward at the borders."""
    length = min(tile + 2 * overlap, size)
    if length == size:
        return [Window(0, size, 0, size)]  # one window sees everything: no tiling needed
    windows = []
    for core_start in range(0, size, tile):
        core_end = min(core_start + tile, size)
        start = min(max(core_start - overlap, 0), size - length)
        windows.append(Window(start, length, core_start, core_end))
    return windows
