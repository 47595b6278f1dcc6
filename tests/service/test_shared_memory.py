"""The shared-memory registry on its own, in this process: real POSIX segments in /dev/shm, real
mappings, observed through /proc/self/maps. (The protocol tests are in
test_shared_memory_api.py.)"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from service.core.shared_memory import SHM_ROOT, SharedMemoryRegistry
from service.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted


@pytest.fixture
def segment():
    """A fresh 4096-byte segment, as shm_open + ftruncate make it; unlinked afterwards."""
    name = f"onnxserve-test-{uuid.uuid4().hex}"
    path = SHM_ROOT / name
    path.write_bytes(bytes(range(256)) * 16)
    yield "/" + name, path
    path.unlink(missing_ok=True)


def mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


def test_a_view_reads_and_writes_the_clients_bytes(segment):
    key, path = segment
    registry = SharedMemoryRegistry()
    registry.register("r", key, 100, 200)
    view = registry.view("r", 10, 16, "input 'x'")
    assert bytes(view) == bytes(range(110, 126))
    view[:4] = b"abcd"
    assert path.read_bytes()[110:114] == b"abcd"
    assert registry.status() == registry.status("r")
    assert (registry.status()[0].key, registry.status()[0].offset) == (key, 100)


@pytest.mark.parametrize("key", ["/../etc/passwd", "a/b", "..", "/", "", "/.", "x\0y", "x" * 256])
def test_keys_that_are_not_one_file_name_are_refused(key):
    with pytest.raises(InvalidArgument, match="expected a POSIX shared-memory key"):
        SharedMemoryRegistry().register("r", key, 0, 1)


def test_symlinks_and_non_files_are_refused(tmp_path):
    (tmp_path / "target").write_bytes(b"\0" * 64)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "dir").mkdir()
    registry = SharedMemoryRegistry(root=tmp_path)
    with pytest.raises(InvalidArgument, match="cannot open segment '/link'"):
        registry.register("r", "/link", 0, 8)
    with pytest.raises(InvalidArgument, match="cannot open segment 'dir'"):
        registry.register("r", "dir", 0, 8)
    with pytest.raises(NotFound, match="no shared-memory segment with key '/absent'"):
        registry.register("r", "/absent", 0, 8)
    assert registry.status() == []


def test_registration_bounds_and_names(segment):
    key, _ = segment
    registry = SharedMemoryRegistry()
    with pytest.raises(InvalidArgument, match=r"offset 4000 \+ byte_size 97 runs past the end of "
                                              r"segment '.*' \(4096 bytes\)"):
        registry.register("r", key, 4000, 97)
    for offset, size in ((-1, 8), (0, 0)):
        with pytest.raises(InvalidArgument, match="offset must be >= 0 and byte_size >= 1"):
            registry.register("r", key, offset, size)
    with pytest.raises(InvalidArgument, match="byte_size must be an integer, got bool True"):
        registry.register("r", key, 0, True)
    registry.register("r", key, 4000, 96)  # unaligned offsets map from the page below them
    assert bytes(registry.view("r", 0, 4, "t")) == bytes(range(160, 164))
    with pytest.raises(AlreadyExists, match="region 'r' is already registered"):
        registry.register("r", key, 0, 8)


def test_requests_stay_inside_their_region(segment):
    key, _ = segment
    registry = SharedMemoryRegistry()
    registry.register("r", key, 0, 64)
    with pytest.raises(NotFound, match="input 'x': shared memory region 'nope' is not registered"):
        registry.view("nope", 0, 4, "input 'x'")
    with pytest.raises(InvalidArgument, match=r"shared_memory_offset 64 is past the end of shared "
                                              r"memory region 'r' \(64 bytes\)"):
        registry.view("r", 64, 1, "input 'x'")
    with pytest.raises(InvalidArgument, match=r"shared_memory_offset 60 \+ "
                                              "shared_memory_byte_size 8 runs past the end"):
        registry.view("r", 60, 8, "input 'x'")
    with pytest.raises(InvalidArgument, match="must be >= 0"):
        registry.view("r", -1, 8, "input 'x'")


def test_a_segment_shrunk_after_registration_is_refused_not_read(segment):
    key, path = segment
    registry = SharedMemoryRegistry()
    registry.register("r", key, 1024, 1024)
    os.truncate(path, 1500)  # pages past the new end would fault (SIGBUS) if read
    with pytest.raises(InvalidArgument, match="was registered over 2048 bytes of segment .* "
                                              "which now has 1500; register it again"):
        registry.view("r", 0, 8, "output 'y'")


def test_unregister_unmaps_once_no_view_holds_the_region(segment):
    key, path = segment
    registry = SharedMemoryRegistry()
    registry.register("held", key, 0, 64)
    registry.register("free", key, 64, 64)
    array = np.frombuffer(registry.view("held", 0, 64, "input 'x'"), np.uint8)
    registry.unregister("free")
    registry.unregister("held")
    registry.unregister("never registered")  # no error, as in Triton
    assert registry.status() == []
    assert mapped(path), "a request's view must keep its mapping alive"
    assert array[:4].tolist() == [0, 1, 2, 3]
    del array
    assert not mapped(path)


def test_close_unmaps_everything(segment):
    key, path = segment
    registry = SharedMemoryRegistry()
    for index in range(3):
        registry.register(f"r{index}", key, index * 8, 8)
    assert mapped(path)
    registry.close()
    assert registry.status() == [] and not mapped(path)


def test_the_number_of_regions_is_bounded(segment):
    key, _ = segment
    registry = SharedMemoryRegistry(max_regions=2)
    registry.register("a", key, 0, 8)
    registry.register("b", key, 0, 8)
    with pytest.raises(ResourceExhausted, match="2 regions are registered"):
        registry.register("c", key, 0, 8)
    registry.unregister("a")
    registry.register("c", key, 0, 8)
    registry.close()
