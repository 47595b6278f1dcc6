"""Fixtures for the training/export tests: small Fashion-MNIST slices, throwaway model folders."""

from __future__ import annotations

import pytest

torch = pytest.importorskip(
    "torch", reason="training extras not installed (pip install -e '.[training]')"
)

from training import common


@pytest.fixture(scope="session")
def fashion_available() -> None:
    """Fail (not skip) with the install hint when the dataset is missing: CI installs it."""
    try:
        common.load_mnist_like("test", limit=1, download=False)
    except common.DatasetMissingError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """One throwaway model repository shared by the smoke tests (and the eval run over it)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
