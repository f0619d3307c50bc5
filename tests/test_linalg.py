"""The CPU-safe eigendecomposition: same results as jnp.linalg, and no deadlock when batched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qep_jax import _linalg

from ._reference import random_hermitian


def test_matches_numpy_batched_and_nested_vmap():
    rng = np.random.default_rng(0)
    a = np.stack([random_hermitian(rng, 5) for _ in range(6)]).reshape(2, 3, 5, 5)
    w, v = _linalg.eigh(a)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(a), atol=1e-12)
    np.testing.assert_allclose(v @ (w[..., None] * np.swapaxes(v.conj(), -1, -2)), a, atol=1e-12)
    np.testing.assert_allclose(_linalg.eigvalsh(a), np.linalg.eigvalsh(a), atol=1e-12)
    nested = jax.vmap(jax.vmap(_linalg.eigvalsh))(jnp.asarray(a))
    np.testing.assert_allclose(nested, np.linalg.eigvalsh(a), atol=1e-12)


def test_derivatives_match_jax_eigh():
    rng = np.random.default_rng(1)
    a = jnp.asarray(random_hermitian(rng, 4, real=True))
    da = jnp.asarray(random_hermitian(rng, 4, real=True))
    ours = jax.jvp(_linalg.eigvalsh, (a,), (da,))[1]
    ref = jax.jvp(jnp.linalg.eigvalsh, (a,), (da,))[1]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    f = lambda x: jnp.sum(_linalg.eigh(x)[1][:, 0] ** 2 * jnp.arange(4.0))  # noqa: E731
    g = lambda x: jnp.sum(jnp.linalg.eigh(x)[1][:, 0] ** 2 * jnp.arange(4.0))  # noqa: E731
    np.testing.assert_allclose(jax.grad(f)(a), jax.grad(g)(a), atol=1e-10)
    batched = jax.vmap(jax.grad(lambda x: _linalg.eigvalsh(x)[-1]))(jnp.stack([a, da]))
    np.testing.assert_allclose(batched[1], jax.grad(lambda x: jnp.linalg.eigvalsh(x)[-1])(da), atol=1e-10)


def test_concurrent_batched_eigh_does_not_deadlock():
    """Two independent batched eigendecompositions in one program used to hang jaxlib 0.10 on 2 cores."""
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        import qep_jax
        from qep_jax.models._spin_two_gorm import SpinTwoGORM
        model = SpinTwoGORM(12, 0.1, 0.1, 0.5, 5.0)
        for i in range(3):
            out = model.simulate(jax.random.key(i), jnp.linspace(0, 50, 11), 6, batch_size=3)
            jax.block_until_ready(out.entropy_production)
        # Before the fix, repeated full-set calls at N = 200 hung in about half of the processes.
        system = qep_jax.SpinGORM(200, 0.1, 0.1, 10.0).open_system(qep_jax.goe(jax.random.key(0), 200))
        for i in range(5):
            jax.block_until_ready(qep_jax.evolve(system, jnp.linspace(0, 200, 100)).entropy_production)
        print("done")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done" in result.stdout


def test_host_paths_threads_and_dtypes(monkeypatch):
    """The host LAPACK paths (batched eigh, eigvalsh): split over threads when BLAS is pinned,
    jit/vmap, float32, and a non-Hermitian input read as its Hermitian part (as jnp.linalg does)."""
    rng = np.random.default_rng(2)
    a = np.stack([random_hermitian(rng, 40) for _ in range(5)])
    ref = np.linalg.eigvalsh(a)
    skew = a + 0.3j * np.stack([random_hermitian(rng, 40, real=True) for _ in range(5)])  # not Hermitian
    for threads in (1, 4):  # threaded split / one NumPy call
        monkeypatch.setattr(_linalg, "blas_threads", lambda threads=threads: threads)
        np.testing.assert_allclose(_linalg._host_eigvalsh(a), ref, atol=1e-12)
        out = jax.jit(jax.vmap(_linalg.eigvalsh))(jnp.asarray(a))
        np.testing.assert_allclose(out, ref, atol=1e-12)
        w, v = jax.jit(jax.vmap(_linalg.eigh))(jnp.asarray(skew))
        np.testing.assert_allclose(w, ref, atol=1e-12)
        np.testing.assert_allclose(v @ (w[..., None] * np.swapaxes(v.conj(), -1, -2)), a, atol=1e-12)
    single = _linalg.eigvalsh(jnp.asarray(a[0], dtype=jnp.complex64))
    assert single.dtype == jnp.float32
    np.testing.assert_allclose(single, ref[0], rtol=1e-4, atol=1e-4)
    w32, v32 = jax.vmap(_linalg.eigh)(jnp.asarray(a, dtype=jnp.complex64))
    assert w32.dtype == jnp.float32 and v32.dtype == jnp.complex64
    np.testing.assert_allclose(w32, ref, rtol=1e-4, atol=1e-4)


def test_batch_eigh_workers_follows_the_host_split(monkeypatch):
    """What the ensemble runner sizes its chunks by: the cores only when a batch is really split."""
    monkeypatch.setattr(_linalg, "blas_threads", lambda: 1)
    assert _linalg.batch_eigh_workers(400) == _linalg.host_cores()
    assert _linalg.batch_eigh_workers(_linalg._THREADED_MIN_DIM - 1) == 1  # small: one NumPy call
    monkeypatch.setattr(_linalg, "blas_threads", lambda: 2)  # threaded BLAS: one call, no split
    assert _linalg.batch_eigh_workers(400) == 1
    monkeypatch.setattr(_linalg, "blas_threads", lambda: 1)
    monkeypatch.setattr(_linalg, "_callbacks_safe", lambda: False)  # several CPU devices: no callbacks
    assert _linalg.batch_eigh_workers(400) == 1


def test_blas_threads_reads_the_live_setting():
    """A threadpoolctl limit set after start-up counts, not just OPENBLAS_NUM_THREADS."""
    code = textwrap.dedent("""
        import threadpoolctl
        from qep_jax import _linalg
        with threadpoolctl.threadpool_limits(2, "blas"):
            a = _linalg.blas_threads()
        with threadpoolctl.threadpool_limits(1, "blas"):
            b = _linalg.blas_threads()
        print(a, b)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2", "1"]


def test_hint_once_when_threaded_blas_blocks_the_split(monkeypatch):
    import warnings

    import qep_jax

    jax.config.update("jax_enable_x64", True)
    model = qep_jax.SpinGORM(16, 0.1, 0.1, 10.0)  # D = 32: large enough to split
    times = np.array([0.0, 1.0])
    monkeypatch.setattr(_linalg, "host_cores", lambda: 2)
    monkeypatch.setattr(_linalg, "_hinted", False)
    monkeypatch.setattr(_linalg, "blas_threads", lambda: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.simulate(jax.random.key(0), times, 2, reservoir_entropies=False)  # pinned: silent
    monkeypatch.setattr(_linalg, "blas_threads", lambda: 2)
    with pytest.warns(UserWarning, match="OPENBLAS_NUM_THREADS=1"):
        model.simulate(jax.random.key(0), times, 2, reservoir_entropies=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.simulate(jax.random.key(0), times, 2, reservoir_entropies=False)  # once per process
        monkeypatch.setattr(_linalg, "_hinted", False)
        model.simulate(jax.random.key(0), times, 2, reservoir_entropies=False, batch_size=1)  # no batch


def test_split_reductions_match_complex_factor():
    """Reduced states from [Re X | Im X] equal those from the complex factor X, every factor kept."""
    from qep_jax import _spectral

    rng = np.random.default_rng(3)
    dims, rank = (2, 3, 4), 5
    total = int(np.prod(dims))
    h = random_hermitian(rng, total, real=True)
    c = rng.normal(size=(total, rank))
    spectrum = _spectral.diagonalize(jnp.asarray(h))
    x = _spectral.propagate_factor(spectrum, jnp.asarray(c), 0.7)
    u = spectrum.vectors @ np.diag(np.exp(-0.7j * spectrum.energies)) @ spectrum.vectors.T
    np.testing.assert_allclose(x, u @ (spectrum.vectors @ c), atol=1e-12)  # C is in the eigenbasis
    re, im = _spectral.propagate_factor_split(spectrum, jnp.asarray(c), 0.7)
    for keep in range(len(dims)):
        np.testing.assert_allclose(_spectral.reduced_from_split(re, im, dims, keep),
                                   _spectral.reduced_from_factor(x, dims, keep), atol=1e-12)
    merged = (dims[0], total // dims[0])  # keeping every reservoir = keeping the merged factor
    np.testing.assert_allclose(_spectral.reduced_from_split(re, im, merged, 1),
                               _spectral.reservoirs_from_factor(x, dims[0]), atol=1e-12)
    # Rows reordered (reservoirs, system): the joint reservoir state is the kept leading block.
    w, moved = _spectral.system_last(spectrum.vectors, dims)
    re, im = _spectral.propagate_factor_split(_spectral.Spectrum(spectrum.energies, w), jnp.asarray(c), 0.7)
    joint = _spectral.reduced_from_split(re, im, (total // dims[0], dims[0]), 0)
    np.testing.assert_allclose(joint, _spectral.reservoirs_from_factor(x, dims[0]), atol=1e-12)
    assert moved == (3, 4, 2)


def test_product_factor_to_eigenbasis_matches_dense_kronecker():
    """W^dag (L (x) S) from the row blocks of W equals the dense product, complex and real, any rank."""
    from qep_jax import _spectral

    rng = np.random.default_rng(5)
    for d_s, m, rank, real in [(2, 5, 1, True), (3, 4, 2, False), (2, 6, 2, False)]:
        total = d_s * m
        spectrum = _spectral.diagonalize(jnp.asarray(random_hermitian(rng, total, real=real)))
        factor = rng.normal(size=(d_s, rank)) + (0.0 if real else 1j * rng.normal(size=(d_s, rank)))
        sqrt_res = random_hermitian(rng, m, real=real)
        got = _spectral.product_factor_to_eigenbasis(spectrum, jnp.asarray(factor), jnp.asarray(sqrt_res))
        w = np.asarray(spectrum.vectors)
        assert got.shape == (total, rank * m)
        assert np.iscomplexobj(got) == (not real)
        np.testing.assert_allclose(got, w.conj().T @ np.kron(factor, sqrt_res), atol=1e-12)


def test_batched_host_eigh_of_a_nan_matrix_gives_nan_not_an_error():
    # NumPy raised LinAlgError inside the callback: a jitted SpinTwoGORM.simulate with delta = NaN
    # ended with an INTERNAL error naming nothing. XLA's own eigh returns NaN; so do the callbacks.
    rng = np.random.default_rng(4)
    a = rng.normal(size=(3, 40, 40))
    a = a + np.swapaxes(a, -1, -2)
    a[1, 0, 0] = np.nan
    w, v = jax.jit(jax.vmap(_linalg.eigh))(jnp.asarray(a))
    values = jax.jit(jax.vmap(_linalg.eigvalsh))(jnp.asarray(a))
    assert np.all(np.isnan(w[1])) and np.all(np.isnan(v[1])) and np.all(np.isnan(values[1]))
    for i in (0, 2):
        np.testing.assert_allclose(w[i], np.linalg.eigvalsh(a[i]), atol=1e-12)
        np.testing.assert_allclose(values[i], np.linalg.eigvalsh(a[i]), atol=1e-12)


def test_two_by_two_eigenvalues_in_closed_form_match_lapack():
    """Qubit states skip the host call: eigenvalues m -+ r agree with LAPACK, batched, real and
    complex, at exact and near degeneracy, with NaN in giving NaN out and the dtype kept."""
    rng = np.random.default_rng(6)
    batch = np.stack([random_hermitian(rng, 2) for _ in range(20)]
                     + [random_hermitian(rng, 2, real=True) for _ in range(5)]
                     + [np.eye(2), np.diag([1.0, 0.0]), np.diag([0.5, 0.5 + 1e-13]),
                        np.array([[1e-14, 1e-9j], [-1e-9j, 1.0]])])
    got = jax.jit(_linalg.eigvalsh)(jnp.asarray(batch))
    # Both are accurate to a few eps ||a|| (||a|| <= 4 here).
    np.testing.assert_allclose(got, np.linalg.eigvalsh(batch), rtol=0, atol=8 * 2.2e-16 * 4)
    assert np.all(np.diff(np.asarray(got), axis=-1) >= 0)  # ascending, as LAPACK
    # Only the Hermitian part counts, as for LAPACK (which reads one triangle of a symmetrized copy).
    skew = np.array([[1.0, 2.0], [0.0, 3.0]])
    np.testing.assert_allclose(_linalg.eigvalsh(jnp.asarray(skew)), np.linalg.eigvalsh((skew + skew.T) / 2),
                               atol=1e-15)
    nan = _linalg.eigvalsh(jnp.array([[np.nan, 0.0], [0.0, 1.0]]))
    assert np.all(np.isnan(nan))
    single = _linalg.eigvalsh(jnp.asarray(batch[0], jnp.complex64))
    assert single.dtype == jnp.float32
    # Derivatives: the rule of the other sizes (first order), checked against JAX's own eigvalsh.
    a, da = jnp.asarray(random_hermitian(rng, 2)), jnp.asarray(random_hermitian(rng, 2))
    np.testing.assert_allclose(jax.jvp(_linalg.eigvalsh, (a,), (da,))[1],
                               jax.jvp(jnp.linalg.eigvalsh, (a,), (da,))[1], atol=1e-12)


def test_transposed_and_adjoint_are_copies_of_the_transpose():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(3, 4, 5)) + 1j * rng.normal(size=(3, 4, 5))
    b = rng.normal(size=(4, 6))
    np.testing.assert_array_equal(_linalg.transposed(jnp.asarray(a)), np.swapaxes(a, -1, -2))
    np.testing.assert_array_equal(_linalg.adjoint(jnp.asarray(a)), np.swapaxes(a, -1, -2).conj())

    def f(x, y):
        return jnp.sum(jnp.sin(_linalg.transposed(x) @ y))

    def g(x, y):
        return jnp.sum(jnp.sin(x.T @ y))

    x = jnp.asarray(rng.normal(size=(4, 5)))
    for argnum in (0, 1):
        np.testing.assert_allclose(jax.grad(f, argnum)(x, jnp.asarray(b)), jax.grad(g, argnum)(x, jnp.asarray(b)),
                                   atol=1e-12)
    np.testing.assert_allclose(jax.vmap(f, (0, None))(jnp.stack([x, 2 * x]), jnp.asarray(b)),
                               [g(x, b), g(2 * x, b)], atol=1e-12)
