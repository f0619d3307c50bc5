"""SpinTwoGORM: construction against a dense reference, batched == looped, thermodynamic identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qep_jax
from qep_jax._evolve import plan_batches
from qep_jax.models._spin_two_gorm import N_SERIES

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
    # Realizations 1-3 in batches of 2 and time chunks of 4 (both with a remainder): each is the
    # evolve of its own draw, to rounding.
    traj = model.simulate(key, TIMES, 3, batch_size=2, time_batch_size=4, first_realization=1)
    for i in range(3):
        ref = qep_jax.evolve(model.open_system(*model.draw(jax.random.fold_in(key, i + 1))), TIMES)
        for name in ("entropy_production", "heat", "mutual_information", "inter_reservoir_correlation",
                     "reservoir_relative_entropy", "system_state"):
            np.testing.assert_allclose(getattr(traj, name)[i], getattr(ref, name), atol=1e-13, rtol=0, err_msg=name)
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


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_simulate_memory_is_bounded_by_the_time_batch(key):
    """All T time points were one batch: at N = 12 (D = 288) XLA's temporary memory was 91/353/701 MiB
    for T = 50/200/400 (evolve of the same system: 31 MiB). The default batch (24 time points here)
    bounds it: 44 MiB at any T with batch_size=1."""
    model = qep_jax.SpinTwoGORM(12, 0.25, 0.2, 0.5, 5.0)
    assert plan_batches((2, 12, 12), 480, 1, N_SERIES, 8, True, None, 1, 2**31) == (24, 1)
    short, long = (_temp_bytes(lambda k: model.simulate(k, jnp.linspace(0.0, 50.0, t), 1, batch_size=1)
                               .mutual_information, key) for t in (48, 480))
    # What grows with T is the per-time output, 64 floats per time point in realization_bytes' estimate.
    assert long - short < (480 - 48) * 64 * 8, (short, long)


def test_gradient_memory_does_not_grow_with_realizations(key):
    """The realizations' intermediates were all kept for the gradient: 14.7/35/117 MiB for R = 2/8/32
    at D = 128 (SpinGORM.simulate: 6.7/8.2/14.2). Each realization, draw included, is now
    checkpointed: 8.2 MiB for every R; checkpointing the kernel alone kept two D x D matrices per
    realization (8.4/9.9/15.9 MiB)."""
    times = jnp.linspace(0.0, 40.0, 8)

    def grad_temp(n_realizations):
        def mean_entropy_production(coupling_strength):
            model = qep_jax.SpinTwoGORM(4, 0.25, coupling_strength, 0.5, 5.0)
            return model.simulate(key, times, n_realizations, reservoir_entropies=False,
                                  batch_size=1).entropy_production.mean()
        return _temp_bytes(jax.grad(mean_entropy_production), 0.3)

    d = 2 * 4 * 4
    few, many = grad_temp(2), grad_temp(16)
    assert many - few < 14 * d * d * 8, (few, many)  # less than one D x D matrix per realization


def test_simulate_argument_checks(model, key):
    with pytest.raises(qep_jax.InputError, match=r"one realization needs about \d+\.\d\d KiB, more than "
                                                 r"memory_budget=1000 bytes"):
        model.simulate(key, TIMES, 2, memory_budget=1000)
    for name, bad in (("memory_budget", 0), ("memory_budget", "1GB"), ("batch_size", 0), ("time_batch_size", 0),
                      ("time_batch_size", 2.0)):
        with pytest.raises(qep_jax.InputError, match=f"^{name}=.* must be a positive int"):
            model.simulate(key, TIMES, 2, **{name: bad})
    with pytest.raises(qep_jax.InputError, match="first_realization=-1 must be an int >= 0"):
        model.simulate(key, TIMES, 2, first_realization=-1)
    with pytest.raises(qep_jax.InputError, match=r"first_realization \+ n_realizations = 4294967298 must be <= "):
        model.simulate(key, TIMES, 2, first_realization=2**32)


def test_float32_parameters_run_in_float32(key):
    """With x64 on, float32 parameters gave a float64 model (promoted to the default float), unlike
    SpinGORM: no float32 run, no float32 warning, and the draw was not rounded."""
    f32 = np.float32
    model32 = qep_jax.SpinTwoGORM(4, f32(0.25), f32(0.3), f32(0.5), f32(5.0))
    model64 = qep_jax.SpinTwoGORM(4, 0.25, 0.3, 0.5, 5.0)
    assert model32.dtype == jnp.float32 and model64.dtype == jnp.float64
    assert qep_jax.SpinTwoGORM(4, f32(0.25), 0.3, f32(0.5), f32(5.0)).dtype == jnp.float64  # as SpinGORM
    # The draw is the float64 draw rounded.
    for x32, x64 in zip(model32.draw(key), model64.draw(key)):
        assert x32.dtype == jnp.float32
        np.testing.assert_array_equal(x32, np.asarray(x64).astype(np.float32))
    times = np.linspace(0.0, 40.0, 6)  # float64 times are cast to the model's precision
    with pytest.warns(UserWarning, match="computing in float32"):
        traj = model32.simulate(key, times, 2, reservoir_entropies=False)
    assert traj.times.dtype == jnp.float32 and traj.entropy_production.dtype == jnp.float32
    ref = model64.simulate(key, times, 2, reservoir_entropies=False)
    np.testing.assert_allclose(traj.entropy_production, ref.entropy_production, atol=1e-5)
    np.testing.assert_allclose(traj.heat, ref.heat, atol=1e-5)
