"""Test configuration: float64 everywhere, strict dtype promotion off (JAX default), a key fixture."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. The whole suite compiles thousands of
    them in one process; with all of them kept, a late XLA compilation crashed (segfault) in 4 of 5
    full runs after the kernels became jitted, at a different test each time."""
    yield
    jax.clear_caches()


@pytest.fixture
def key():
    return jax.random.key(20100113)


@pytest.fixture(autouse=True)
def _no_float32_warning_leak():
    yield


@pytest.fixture
def poison_gather(monkeypatch):
    """``poison(call, index, value)``: the ensemble runner's ``call``-th gathered array (one per
    quantity and chunk, counted from 1) gets ``value`` at ``index``; returns the real gather."""
    import numpy as np

    import qep_jax

    real = qep_jax._ensemble._gather

    def poison(call, index, value):
        count = [0]

        def poisoned(x):
            v = np.array(real(x))
            count[0] += 1
            if count[0] == call:
                v[index] = value
            return v

        monkeypatch.setattr(qep_jax._ensemble, "_gather", poisoned)
        return real

    return poison
