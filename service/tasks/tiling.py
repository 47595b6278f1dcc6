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


# Image sizes whose tile runs warm-up covers (width, height): full HD, HD, VGA and the bench's
# 256x256. Images at least tile + 2 * overlap pixels on both sides all cut into the same window
# shape; a smaller side is one window of the image's own size, which only these sizes warm.
WARMUP_IMAGE_SIZES = ((1920, 1080), (1280, 720), (640, 480), (256, 256))


def tile_runs(width: int, height: int, tile: int, overlap: int,
              max_batch: int) -> set[tuple[int, int, int]]:
    """(batch, window height, window width) of every model run an upscale of a width x height
    image makes: one row of windows per request, split into requests of at most `max_batch`
    tiles (as TaskCore._run splits them)."""
    rows, cols = tile_windows(height, tile, overlap), tile_windows(width, tile, overlap)
    sizes = {min(max_batch, len(cols) - start) for start in range(0, len(cols), max_batch)}
    return {(batch, row.length, cols[0].length) for row in rows for batch in sizes}
