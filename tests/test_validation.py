"""Each kind of bad input raises InputError naming the argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qep_jax

H_S = np.diag([-0.5, 0.5])
H_R = np.diag([-0.5, 0.0, 0.5])
V = 0.1 * np.kron(np.array([[0.0, 1.0], [1.0, 0.0]]), np.ones((3, 3)))
RHO = np.diag([1.0, 0.0])


def make(**overrides):
    args = dict(h_system=H_S, h_reservoirs=H_R, betas=2.0, coupling=V, rho_system=RHO)
    args.update(overrides)
    return qep_jax.OpenSystem(**args)


def test_valid_problem_builds():
    system = make()
    assert system.dims == (2, 3) and system.total_dim == 6 and system.n_reservoirs == 1
    # Half-precision matrices with a float beta are promoted (validation used to fail in NumPy's eigvalsh).
    half = make(h_system=H_S.astype(np.float16), rho_system=RHO.astype(np.float16))
    assert half.rho_system.dtype == jnp.result_type(float)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (dict(h_system=np.array([[0.0, 1.0], [0.0, 0.0]])), "h_system is not Hermitian"),
        (dict(h_system=np.ones((2, 3))), "h_system must be a square"),
        (dict(h_system=np.array([[np.nan, 0], [0, 1.0]])), "h_system contains NaN"),
        (dict(h_reservoirs=np.triu(np.ones((3, 3)))), r"h_reservoirs\[0\] is not Hermitian"),
        (dict(betas=np.inf), "betas contains NaN or infinite"),
        (dict(betas=[1.0, 2.0]), "betas has shape"),
        (dict(coupling=np.zeros((4, 4))), r"coupling has shape \(4, 4\), expected \(6, 6\)"),
        # A wrong-size h_system shows up as a coupling mismatch; the message must point at it too.
        (dict(h_system=np.eye(3)), r"coupling has shape \(6, 6\), expected \(9, 9\).*fix whichever of h_system"),
        (dict(coupling=np.triu(np.ones((6, 6)))), "coupling is not Hermitian"),
        (dict(rho_system=np.diag([0.5, 0.6])), "rho_system has trace"),
        (dict(rho_system=np.diag([1.5, -0.5])), "rho_system has a negative eigenvalue"),
        (dict(rho_system=np.eye(3) / 3), r"rho_system has shape \(3, 3\), expected \(2, 2\)"),
        (dict(h_reservoirs=[]), "h_reservoirs is empty"),
        (dict(chemical_potentials=0.3), "chemical_potentials needs number_operators"),
        (dict(number_operators=[np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])]), "does not commute"),
        (dict(h_reservoirs=np.ones((3, 3)), diagonal_reservoirs=True), "diagonal_reservoirs=True, but"),
        (dict(diagonal_reservoirs="yes"), "diagonal_reservoirs='yes' must be True, False or None"),
        (dict(h_system=H_S.astype(np.float16), h_reservoirs=H_R.astype(np.float16), coupling=V.astype(np.float16),
              rho_system=RHO.astype(np.float16), betas=np.float16(2.0)), "dtype float16, which qep_jax does not support"),
    ],
)
def test_bad_open_system_input(overrides, pattern):
    with pytest.raises(qep_jax.InputError, match=pattern):
        make(**overrides)


def test_diagonal_reservoirs_is_inspected_declared_and_kept_through_transformations():
    assert make().diagonal_reservoirs is True
    assert make(h_reservoirs=np.ones((3, 3))).diagonal_reservoirs is False
    # Diagonal H_r but a non-diagonal N_r: the grand Hamiltonian's basis is not the standard one.
    n_r = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert make(h_reservoirs=np.eye(3), number_operators=[n_r]).diagonal_reservoirs is False
    assert make(diagonal_reservoirs=False).diagonal_reservoirs is False  # an opt-out is kept
    # Static metadata (the pytree's aux data, not one of its 6 array leaves): kept through jit.
    leaves, treedef = jax.tree_util.tree_flatten(make())
    assert len(leaves) == 6 and jax.tree_util.tree_unflatten(treedef, leaves).diagonal_reservoirs is True
    assert jax.jit(lambda s: s)(make()).diagonal_reservoirs is True
    # Traced matrices cannot be inspected: False unless declared.
    flags = []
    jax.jit(lambda h: flags.append((make(h_reservoirs=h).diagonal_reservoirs,
                                    make(h_reservoirs=h, diagonal_reservoirs=True).diagonal_reservoirs)))(H_R)
    assert flags == [(False, True)]


def test_bad_times():
    system = make()
    with pytest.raises(qep_jax.InputError, match="times must be finite"):
        qep_jax.evolve(system, [0.0, np.nan])
    with pytest.raises(qep_jax.InputError, match="times must be a non-empty 1-D"):
        qep_jax.evolve(system, np.zeros((2, 2)))
    with pytest.raises(qep_jax.InputError, match="time_batch_size"):
        qep_jax.evolve(system, [0.0, 1.0], time_batch_size=0)
    with pytest.raises(qep_jax.InputError, match="open_system must be"):
        qep_jax.evolve("not a system", [0.0])
    # Traced grids: a scalar is one time point as when concrete (it raised IndexError); 2-D is refused.
    d_is = lambda t: qep_jax.evolve(system, t, reservoir_entropies=False).entropy_production  # noqa: E731
    np.testing.assert_allclose(jax.jit(d_is)(1.5), d_is(1.5), atol=1e-14)
    np.testing.assert_allclose(jax.vmap(d_is)(jnp.array([1.5, 2.0]))[:, 0], [d_is(1.5)[0], d_is(2.0)[0]], atol=1e-14)
    with pytest.raises(qep_jax.InputError, match="times must be a non-empty 1-D"):
        jax.jit(d_is)(jnp.zeros((2, 2)))


def test_concrete_arguments_are_checked_when_others_are_traced():
    """One traced argument (here beta under jit) used to switch off every check of the concrete ones."""
    for overrides, pattern in ((dict(rho_system=np.diag([1.5, 0.5])), "rho_system has trace"),
                               (dict(coupling=V + 0.3 * np.triu(np.ones((6, 6)), 1)), "coupling is not Hermitian"),
                               (dict(rho_system=np.diag([1.3, -0.3])), "negative eigenvalue"),
                               (dict(coupling=np.zeros((4, 4))), r"coupling has shape \(4, 4\)")):
        with pytest.raises(qep_jax.InputError, match=pattern):
            jax.jit(lambda b: make(betas=b, **overrides).betas)(2.0)
    grad = jax.grad(lambda b: qep_jax.evolve(make(betas=b), [1.0], reservoir_entropies=False).heat[0, 0])(2.0)
    assert np.isfinite(grad)  # valid arguments still differentiate


def test_values_that_overflow_the_working_precision():
    """Finite in float64, infinite in float32 (x64 off): refused instead of NaN results."""
    with jax.enable_x64(False):
        with pytest.raises(qep_jax.InputError, match="betas overflows float32"):
            make(betas=1e39)
        with pytest.raises(qep_jax.InputError, match="h_system overflows float32"):
            make(h_system=1e39 * H_S)
        assert make(betas=1e30).betas.dtype == np.float32


def test_one_reservoir_as_nested_lists():
    nested = make(h_reservoirs=[[-0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    assert nested.dims == (2, 3) and nested.n_reservoirs == 1
    np.testing.assert_array_equal(nested.h_reservoirs[0], H_R)


def test_bad_model_input(key):
    with pytest.raises(qep_jax.InputError, match="n_levels"):
        qep_jax.SpinGORM(1, 0.1, 0.1, 10.0)
    with pytest.raises(qep_jax.InputError, match="delta contains NaN"):
        qep_jax.SpinGORM(4, np.nan, 0.1, 10.0)
    with pytest.raises(qep_jax.InputError, match="beta=.* must be a real scalar"):
        qep_jax.SpinGORM(4, 0.1, 0.1, [1.0, 2.0])
    with pytest.raises(qep_jax.InputError, match="dtype float16, which qep_jax does not support"):
        qep_jax.SpinGORM(4, np.float16(0.1), np.float16(0.1), np.float16(10.0))
    model = qep_jax.SpinGORM(4, 0.1, 0.1, 10.0)
    with pytest.raises(qep_jax.InputError, match=r"x has shape \(3, 3\), expected \(4, 4\)"):
        model.open_system(np.eye(3))
    with pytest.raises(qep_jax.InputError, match="x is not Hermitian"):
        model.open_system(np.triu(np.ones((4, 4))))
    with pytest.raises(qep_jax.InputError, match="n_realizations"):
        model.simulate(key, [0.0, 1.0], 0)
    with pytest.raises(qep_jax.InputError, match="batch_size"):
        model.simulate(key, [0.0, 1.0], 2, batch_size=-1)
    with pytest.raises(qep_jax.InputError, match="time_batch_size=0 must be a positive int"):
        model.simulate(key, [0.0, 1.0], 2, time_batch_size=0)
    two = qep_jax.SpinTwoGORM(4, 0.1, 0.1, 1.0, 10.0)
    with pytest.raises(qep_jax.InputError, match="x_hot is not Hermitian"):
        two.open_system(np.triu(np.ones((4, 4))), np.eye(4))
    with pytest.raises(qep_jax.InputError, match="x_cold contains NaN"):
        two.open_system(np.eye(4), np.full((4, 4), np.nan))
    # A string or None gave NumPy's "ufunc 'isfinite' not supported", naming no argument.
    for bad in ("0.1", None):
        with pytest.raises(qep_jax.InputError, match="delta=.* must be a real scalar"):
            qep_jax.SpinTwoGORM(4, bad, 0.1, 1.0, 10.0)
        with pytest.raises(qep_jax.InputError, match="delta=.* must be a real scalar"):
            qep_jax.SpinGORM(4, bad, 0.1, 10.0)
    # Nested lists are matrices too (jnp.result_type refused them).
    two.open_system(np.eye(4).tolist(), np.eye(4).tolist())
    model.open_system(np.eye(4).tolist())


def test_counts_accept_numpy_integers_and_refuse_bools(key):
    system = make()
    a = qep_jax.evolve(system, [0.0, 1.0, 2.0], time_batch_size=np.int64(2))
    b = qep_jax.evolve(system, [0.0, 1.0, 2.0], time_batch_size=2)
    np.testing.assert_array_equal(a.entropy_production, b.entropy_production)
    assert qep_jax.goe(key, np.int32(3)).shape == (3, 3)
    model = qep_jax.SpinGORM(4, 0.1, 0.1, 10.0)
    assert model.simulate(key, [0.0, 1.0], np.int64(2), batch_size=np.int64(1),
                          time_batch_size=np.int64(1)).entropy_production.shape == (2, 2)
    with pytest.raises(qep_jax.InputError, match="time_batch_size=True must be a positive int"):
        qep_jax.evolve(system, [0.0, 1.0], time_batch_size=True)
    with pytest.raises(qep_jax.InputError, match="n=2.5 must be a positive int"):
        qep_jax.goe(key, 2.5)
    with pytest.raises(qep_jax.InputError, match="first_realization=-1 must be an int >= 0"):
        model.simulate(key, [0.0, 1.0], 2, first_realization=-1)


def test_memory_refusal(key):
    model = qep_jax.SpinGORM(2000, 0.1, 0.1, 10.0)
    with pytest.raises(qep_jax.InputError, match="one realization needs about .* GiB.*raise memory_budget"):
        model.simulate(key, jnp.linspace(0, 1, 4), 2, memory_budget=2**20)


def test_immutable():
    system = make()
    with pytest.raises(AttributeError):
        system.betas = 3.0
