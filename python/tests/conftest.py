"""Shared helpers of the Python suite (run by `make test` through CTest, or `pytest python/tests`)."""
import os
import pathlib

import numpy as np
import pytest

REFERENCE_DIR = pathlib.Path(os.environ.get("TOKENMIX_REFERENCE_DIR",
                                            pathlib.Path(__file__).resolve().parents[2] / "tests/data/reference"))


def require(module_name):
    """Imports an upstream package; the suite run by `make test` (TOKENMIX_REQUIRE_UPSTREAM=1) fails
    when it is missing instead of skipping, so a broken test environment cannot pass silently."""
    if os.environ.get("TOKENMIX_REQUIRE_UPSTREAM") == "1":
        import importlib

        return importlib.import_module(module_name)
    return pytest.importorskip(module_name)


def assert_close(actual, expected, atol, rtol, what=""):
    a = actual.detach().numpy() if hasattr(actual, "detach") else np.asarray(actual)
    e = expected.detach().numpy() if hasattr(expected, "detach") else np.asarray(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    err = np.abs(a.astype(np.float64) - e)
    bound = atol + rtol * np.abs(e)
    assert np.all(err <= bound), f"{what}: max abs error {err.max():.3g} (atol {atol}, rtol {rtol})"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
