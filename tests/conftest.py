"""Test configuration: float64 everywhere, strict dtype promotion off (JAX default), a key fixture."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.key(20100113)


@pytest.fixture(autouse=True)
def _no_float32_warning_leak():
    yield
