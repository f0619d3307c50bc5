"""SpinTwoGORM: construction against a dense reference, batched == looped, thermodynamic identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qep_jax

from ._reference import dense_reference

N = 5
TIMES = jnp.linspace(0.0, 40.0, 6)


@pytest.fixture
def model():
    return qep_jax.SpinTwoGORM(n_levels=N, delta=0.25, coupling_strength=0.3, beta_hot=0.5, beta_cold=5.0)


def test_open_system_matches_dense_reference(model, key):
    x_hot, x_cold = model.draw(key)
    system = model.open_system(x_hot, x_cold)
    r_hot, r_cold = np.asarray(x_hot) / np.sqrt(8 * N), np.asarray(x_cold) / np.sqrt(8 * N)
    e = np.linspace(-0.5, 0.5, N)
    sz, sx, eye_s, eye_r = np.diag([-1.0, 1.0]), np.array([[0.0, 1.0], [1.0, 0.0]]), np.eye(2), np.eye(N)
    h = (0.125 * np.kron(sz, np.kron(eye_r, eye_r)) + np.kron(eye_s, np.kron(np.diag(e), eye_r))
         + np.kron(eye_s, np.kron(eye_r, np.diag(e)))
         + 0.3 * np.kron(sx, np.kron(r_hot, eye_r) + np.kron(eye_r, r_cold)))
    np.testing.assert_allclose(system.hamiltonian(), h, atol=1e-14)
    np.testing.assert_allclose(system.betas, [0.5, 5.0])
    # The model's trajectory against the dense reference built from these matrices alone.
    coupling = 0.3 * np.kron(sx, np.kron(r_hot, eye_r) + np.kron(eye_r, r_cold))
    ref = dense_reference(0.125 * sz, [np.diag(e), np.diag(e)], np.array([0.5, 5.0]), coupling, np.diag([1.0, 0.0]),
                          np.asarray(TIMES))
    traj = qep_jax.evolve(system, TIMES)
    for name in ("system_state", "heat", "entropy_production", "entropy_production_balance", "reservoir_entropy",
                 "mutual_information", "inter_reservoir_correlation", "reservoir_relative_entropy",
                 "interaction_energy"):
        np.testing.assert_allclose(getattr(traj, name), ref[name], atol=1e-10, err_msg=name)
    # The two draws are independent GOE matrices, not copies.
    assert not np.allclose(x_hot, x_cold)


def test_simulate_equals_loop_of_evolve_and_identities(model, key):
    traj = model.simulate(key, TIMES, 3, batch_size=2)
    for i in range(3):
        ref = qep_jax.evolve(model.open_system(*model.draw(jax.random.fold_in(key, i))), TIMES)
        for name in ("entropy_production", "heat", "mutual_information", "inter_reservoir_correlation",
                     "reservoir_relative_entropy"):
            np.testing.assert_allclose(getattr(traj, name)[i], getattr(ref, name), atol=1e-11, rtol=1e-9)
    # eq. 18 with two reservoirs, and energy conservation: Q_hot + Q_cold = dE_s + d<V>.
    split = traj.mutual_information + traj.inter_reservoir_correlation + traj.reservoir_relative_entropy.sum(-1)
    np.testing.assert_allclose(split, traj.entropy_production, atol=1e-10)
    d_sys = (traj.system_energy - traj.system_energy[:, :1]) + (traj.interaction_energy - traj.interaction_energy[:, :1])
    np.testing.assert_allclose(traj.heat.sum(-1), d_sys, atol=1e-11)
    assert np.all(np.asarray(traj.entropy_production) > -1e-10)


def test_zero_coupling_is_frozen(key):
    # lambda = 0: nothing moves; the spin keeps |0><0| and every entropy is zero.
    frozen = qep_jax.SpinTwoGORM(n_levels=N, delta=0.25, coupling_strength=0.0, beta_hot=1.0, beta_cold=1.0)
    traj = frozen.simulate(key, TIMES, 2)
    np.testing.assert_allclose(traj.entropy_production, 0.0, atol=1e-10)
    np.testing.assert_allclose(traj.heat, 0.0, atol=1e-12)
    np.testing.assert_allclose(traj.system_state, np.broadcast_to(np.diag([1.0, 0.0]), traj.system_state.shape),
                               atol=1e-12)
    for name in ("system_entropy", "mutual_information", "correlation_entropy", "inter_reservoir_correlation"):
        np.testing.assert_allclose(getattr(traj, name), 0.0, atol=1e-10, err_msg=name)


def test_validation():
    with pytest.raises(qep_jax.InputError, match="n_levels"):
        qep_jax.SpinTwoGORM(n_levels=1, delta=0.1, coupling_strength=0.1, beta_hot=1.0, beta_cold=2.0)
    with pytest.raises(qep_jax.InputError, match="beta_cold"):
        qep_jax.SpinTwoGORM(n_levels=3, delta=0.1, coupling_strength=0.1, beta_hot=1.0, beta_cold=np.nan)
    model = qep_jax.SpinTwoGORM(n_levels=3, delta=0.1, coupling_strength=0.1, beta_hot=1.0, beta_cold=2.0)
    with pytest.raises(qep_jax.InputError, match="x_hot"):
        model.open_system(jnp.eye(4), jnp.eye(3))
