"""float32 runs stay float32 and their absolute error against float64 is the documented ~1e-6 nats."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

import qep_jax


def test_float32_accuracy_against_float64(key):
    n, times = 40, np.array([0.01, 1.0, 10.0, 100.0])
    x = np.asarray(qep_jax.goe(key, n))
    exact = qep_jax.evolve(qep_jax.SpinGORM(n, 0.1, 0.1, 10.0).open_system(x), times)
    model32 = qep_jax.SpinGORM(n, np.float32(0.1), np.float32(0.1), np.float32(10.0))
    with pytest.warns(UserWarning, match="float32"):
        single = qep_jax.evolve(model32.open_system(x.astype(np.float32)), times)
    assert single.entropy_production.dtype == np.float32
    assert single.system_state.dtype == np.complex64
    # README 'Precision': absolute errors ~1e-6 nats (measured at N = 100); bound with a 10x margin.
    for name in ("entropy_production", "entropy_production_balance", "mutual_information",
                 "reservoir_relative_entropy", "entropy_production_open", "system_entropy"):
        err = np.max(np.abs(np.asarray(getattr(exact, name)) - np.asarray(getattr(single, name), float)))
        assert err < 2e-5, (name, err)


def test_float64_runs_do_not_warn(key):
    model = qep_jax.SpinGORM(4, 0.1, 0.1, 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.simulate(key, np.array([0.0, 1.0]), 2)
    assert jax.config.jax_enable_x64


def test_float32_times_beyond_range_are_refused(key):
    """A time that overflows float32 became inf in the cast and every value NaN."""
    model32 = qep_jax.SpinGORM(6, np.float32(0.1), np.float32(0.1), np.float32(2.0))
    system = model32.open_system(np.asarray(qep_jax.goe(key, 6), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(qep_jax.InputError, match=r"times: 1e\+39 overflows float32"):
            qep_jax.evolve(system, np.array([0.0, 1e39]))
        assert np.all(np.isfinite(qep_jax.evolve(system, np.array([0.0, 1e3])).entropy_production))
