"""The spin-GORM model: GOE statistics, construction, batching invariances, determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qep_jax

from ._reference import dense_reference


def test_goe_moments(key):
    n, m = 6, 4000
    x = np.asarray(qep_jax.goe(key, n, shape=(m,)))
    np.testing.assert_array_equal(x, np.swapaxes(x, -1, -2))
    diag = x[:, np.arange(n), np.arange(n)].ravel()
    off = x[:, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]].ravel()
    # Standard errors: mean sqrt(var/M), variance var*sqrt(2/M); allow 5 sigma.
    assert abs(diag.mean()) < 5 * np.sqrt(2 / diag.size)
    assert abs(off.mean()) < 5 * np.sqrt(1 / off.size)
    assert abs(diag.var() - 2.0) < 5 * 2.0 * np.sqrt(2 / diag.size)
    assert abs(off.var() - 1.0) < 5 * 1.0 * np.sqrt(2 / off.size)
    # <Tr X^2> = n * 2 + n(n-1) * 1 from the density exp(-Tr X^2 / 4).
    tr2 = np.einsum("mij,mji->m", x, x)
    assert abs(tr2.mean() - (2 * n + n * (n - 1))) < 5 * tr2.std() / np.sqrt(m)


def test_goe_draws_the_normals_of_its_key_under_jit_and_vmap(key):
    """Writing the normals out (a reduction with zeros) changes no sample: the same matrices, to the
    rounding of the division, as (A + A^T)/sqrt(2) of jax.random.normal with the same key, eagerly,
    jitted and vmapped."""
    keys = jax.random.split(key, 3)
    direct = [(a + a.T) / np.sqrt(2.0) for a in (np.asarray(jax.random.normal(k, (5, 5))) for k in keys)]
    for got in ([qep_jax.goe(k, 5) for k in keys], [jax.jit(qep_jax.goe, static_argnums=1)(k, 5) for k in keys],
                list(jax.vmap(lambda k: qep_jax.goe(k, 5))(keys))):
        for g, d in zip(got, direct):
            np.testing.assert_allclose(np.asarray(g), d, rtol=4e-16, atol=0)


def test_open_system_is_the_paper_model(key):
    n = 5
    model = qep_jax.SpinGORM(n, 0.3, 0.2, 4.0)
    x = np.asarray(qep_jax.goe(key, n))
    system = model.open_system(x)
    sz = np.diag([-1.0, 1.0])
    sx = np.array([[0.0, 1.0], [1.0, 0.0]])
    h_r = np.diag(np.linspace(-0.5, 0.5, n))
    expected = 0.15 * np.kron(sz, np.eye(n)) + np.kron(np.eye(2), h_r) + 0.2 * np.kron(sx, x / np.sqrt(8 * n))
    np.testing.assert_allclose(system.hamiltonian(), expected, atol=1e-15)
    np.testing.assert_allclose(system.rho_system, np.diag([1.0, 0.0]))
    # Lower level |0>: sigma_z |0> = -|0>, energy -Delta/2.
    assert float(jnp.real(jnp.trace(system.h_system @ system.rho_system))) == -0.15


def test_simulate_matches_dense_reference_and_loop(key):
    n, times = 6, np.array([0.0, 2.0, 9.0])
    model = qep_jax.SpinGORM(n, 0.1, 0.4, 3.0)
    batch = model.simulate(key, times, 3, batch_size=2)
    for i in range(3):
        x = qep_jax.goe(jax.random.fold_in(key, i), n)
        single = qep_jax.evolve(model.open_system(x), times)
        for name, value in single.fields().items():
            np.testing.assert_allclose(getattr(batch, name)[i], value, atol=1e-12, err_msg=name)
    system = model.open_system(qep_jax.goe(jax.random.fold_in(key, 2), n))
    ref = dense_reference(np.asarray(system.h_system), [np.asarray(system.h_reservoirs[0])], np.array([3.0]),
                          np.asarray(system.coupling), np.diag([1.0, 0.0]), times)
    np.testing.assert_allclose(batch.entropy_production[2], ref["entropy_production"], atol=1e-10)
    np.testing.assert_allclose(batch.mutual_information[2], ref["mutual_information"], atol=1e-10)


def test_vmap_over_open_systems_equals_loop(key):
    n, times = 5, jnp.linspace(0.0, 6.0, 4)
    model = qep_jax.SpinGORM(n, 0.2, 0.3, 2.0)
    xs = qep_jax.goe(key, n, shape=(3,))
    systems = [model.open_system(x) for x in xs]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *systems)
    vmapped = jax.vmap(lambda s: qep_jax.evolve(s, times))(stacked)
    for i, s in enumerate(systems):
        looped = qep_jax.evolve(s, times)
        np.testing.assert_allclose(vmapped.entropy_production[i], looped.entropy_production, atol=1e-12)
        np.testing.assert_allclose(vmapped.reservoir_entropy[i], looped.reservoir_entropy, atol=1e-12)


def test_chunked_equals_unchunked_and_same_key_same_result(key):
    model = qep_jax.SpinGORM(6, 0.1, 0.2, 10.0)
    times = jnp.linspace(0.0, 20.0, 5)
    a = model.simulate(key, times, 5, batch_size=5)
    b = model.simulate(key, times, 5, batch_size=2)
    c = model.simulate(key, times, 5, batch_size=2)
    d = model.simulate(key, times, 2, first_realization=3)
    for name, value in a.fields().items():
        np.testing.assert_allclose(value, getattr(b, name), atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(np.asarray(getattr(b, name)), np.asarray(getattr(c, name)))
        np.testing.assert_allclose(value[3:], getattr(d, name), atol=1e-12, err_msg=name)
    other = model.simulate(jax.random.key(1), times, 5)
    assert not np.allclose(other.entropy_production, a.entropy_production)


def test_model_parameters_are_differentiable_leaves(key):
    """The model is a pytree whose continuous parameters are leaves (jit/vmap/grad see them)."""
    model = qep_jax.SpinGORM(4, 0.1, 0.2, 10.0)
    leaves = jax.tree.leaves(model)
    assert len(leaves) == 3
    doubled = jax.tree.map(lambda v: 2 * v, model)
    assert doubled.n_levels == 4 and float(doubled.beta) == 20.0


def test_simulate_memory_message_uses_a_readable_unit(key):
    """It printed 'needs about 0.00 GiB, more than memory_budget=0.00 GiB' for small budgets."""
    model = qep_jax.SpinGORM(8, 0.1, 0.1, 2.0)
    with pytest.raises(qep_jax.InputError, match=r"needs about \d+\.\d\d KiB, more than memory_budget=1000 bytes "
                                                 r"\(1000 B\)"):
        model.simulate(key, np.array([0.0, 1.0]), 2, memory_budget=1000)


def test_gradient_memory_does_not_grow_with_realizations(key):
    """The kernel's checkpoint stored its input system, two D x D matrices per realization (grad
    memory 6.7/8.2/14.2 MiB for R = 2/8/32 at D = 128); the whole realization, draw included, is
    now checkpointed and only its index is stored."""
    times = jnp.linspace(0.0, 40.0, 8)

    def grad_temp(n_realizations):
        def mean_entropy_production(coupling_strength):
            model = qep_jax.SpinGORM(16, 0.25, coupling_strength, 2.0)
            return model.simulate(key, times, n_realizations, reservoir_entropies=False,
                                  batch_size=1).entropy_production.mean()
        return jax.jit(jax.grad(mean_entropy_production)).lower(0.3).compile().memory_analysis().temp_size_in_bytes

    d = 2 * 16
    few, many = grad_temp(2), grad_temp(16)
    assert many - few < 14 * d * d * 8, (few, many)  # less than one D x D matrix per realization
