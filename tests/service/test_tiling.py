"""`tile_windows`, the pure function behind every tiled upscale, checked over all small sizes."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from service.tasks.tiling import tile_windows


@settings(max_examples=400, deadline=None, derandomize=True)
@given(size=st.integers(1, 700), tile=st.integers(8, 256), overlap=st.integers(0, 64))
def test_windows_cover_the_axis_once_with_equal_lengths_and_full_context(size, tile, overlap):
    windows = tile_windows(size, tile, overlap)
    # The cores partition [0, size) in order: every output pixel comes from exactly one window.
    assert windows[0].core_start == 0 and windows[-1].core_end == size
    assert all(a.core_end == b.core_start for a, b in zip(windows, windows[1:]))
    # One length for every window of the axis (so a row of tiles stacks into one batch), never
    # longer than the axis.
    length = min(tile + 2 * overlap, size)
    assert {w.length for w in windows} == {length}
    for w in windows:
        assert 0 <= w.start and w.start + w.length <= size
        assert w.start <= w.core_start < w.core_end <= w.start + w.length
        if len(windows) > 1:  # one window that sees the whole axis computes all of it
            assert w.core_end - w.core_start <= tile
        # Context: `overlap` real pixels beyond each inner edge of the core, or the image's edge.
        assert w.core_start - w.start >= min(overlap, w.core_start)
        assert w.start + w.length - w.core_end >= min(overlap, size - w.core_end)


def test_an_axis_shorter_than_a_window_is_one_window():
    [window] = tile_windows(100, 128, 16)
    assert (window.start, window.length, window.core_start, window.core_end) == (0, 100, 0, 100)
