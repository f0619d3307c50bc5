"""Targeted checks of the custom derivative rules (``_spectral_series_jvp``, ``_thermal_state_jvp``,
the relative-entropy JVP and the t = 0 ``with_value`` pinning of ``evolve``).

Each test covers a case the broad checks of test_gradients.py do not reach: tangents that are not
Hermitian, a near-degenerate pair whose second-order Taylor term matters, negative times, a
rank-deficient ``sigma`` and the time derivative at t = 0.

References are independent of the rules under test: central finite differences of the jitted
value functions (float64, step 1e-6 or 1e-5; the error budget is given at each tolerance) or exact
zeros where the value provably does not depend on a direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qep_jax

from ._reference import random_density_matrix, random_hermitian


def _central(f, step):
    return (f(step) - f(-step)) / (2 * step)


# ------------------------------------------------- Hermitian projection of the input tangents
#
# evolve reads only the Hermitian part of H_s, H_r, V and rho_s(0) (the eigendecompositions do,
# and the series starts from herm(rho_s(0))). So a derivative along an anti-Hermitian direction
# i X is exactly 0, and a gradient with respect to any of these matrices is Hermitian.

HERM_TIMES = jnp.array([0.9, 2.5])  # no t = 0: there rho_s is pinned to the raw input value


def _hermitian_case():
    rng = np.random.default_rng(11)
    d_s, d_r = 2, 3
    base = dict(
        h_system=random_hermitian(rng, d_s),
        h_reservoir=random_hermitian(rng, d_r),  # complex, non-diagonal: the thermal-state eigh path
        coupling=random_hermitian(rng, d_s * d_r, scale=0.4),
        rho_system=(random_density_matrix(rng, d_s) + np.eye(d_s) / d_s) / 2,  # well inside, mixed
    )
    hermitian_direction = dict(
        h_reservoir=random_hermitian(rng, d_r),
        coupling=random_hermitian(rng, d_s * d_r),
        rho_system=random_hermitian(rng, d_s) * np.array([[0.0, 1.0], [1.0, 0.0]]),  # traceless
    )
    return ({k: jnp.asarray(v) for k, v in base.items()},
            {k: jnp.asarray(v) for k, v in hermitian_direction.items()})


def _herm_fields(p):
    """Every real output (system_state split into real and imaginary parts), flattened."""
    system = qep_jax.OpenSystem(p["h_system"], [p["h_reservoir"]], [1.1], p["coupling"], p["rho_system"])
    fields = qep_jax.evolve(system, HERM_TIMES, reservoir_entropies=True).fields()
    fields.pop("times")
    state = fields.pop("system_state")
    fields["system_state_real"], fields["system_state_imag"] = jnp.real(state), jnp.imag(state)
    return fields


def _herm_scalar(p):
    fields = _herm_fields(p)
    return (fields["entropy_production"][-1] + fields["mutual_information"][-1]
            + fields["system_state_imag"][-1, 0, 1])


herm_values = jax.jit(_herm_fields)
herm_tangents = jax.jit(lambda p, d: jax.jvp(_herm_fields, (p,), (d,))[1])
herm_scalar = jax.jit(_herm_scalar)
herm_gradient = jax.jit(jax.grad(_herm_scalar))


@pytest.mark.parametrize("name", ["coupling", "rho_system", "h_reservoir"])
def test_non_hermitian_tangents_are_projected(name):
    """Kills P01 (dH), P02 (d rho_s(0)) and T07 (dG of the thermal state): without the Hermitian
    projection the anti-Hermitian direction gives derivatives of order 0.1-1, and the gradients are
    not Hermitian. 1e-12 is rounding of O(1) sums (the exact value is 0); 1e-7 on the central
    difference (step 1e-6): truncation h^2 f''' / 6 ~ 1e-12 and rounding eps |f| / h ~ 1e-10."""
    base, hermitian = _hermitian_case()
    zero = {k: jnp.zeros_like(base[k]) for k in hermitian}
    zero["h_system"] = jnp.zeros_like(base["h_system"])

    # (a) derivative along i X (X Hermitian) of every real output is 0
    anti = dict(zero, **{name: 1j * hermitian[name]})
    tangents = herm_tangents(base, anti)
    for field, t in tangents.items():
        np.testing.assert_allclose(np.asarray(t), 0.0, atol=1e-12, err_msg=f"{field} along i X of {name}")

    # (b) the gradient is Hermitian and its contraction with a Hermitian direction is the derivative
    grad = herm_gradient(base)[name]
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad).conj().T, atol=1e-12, err_msg=name)
    direction = dict(zero, **{name: hermitian[name]})
    along = jax.tree_util.tree_map
    fd = _central(lambda e: herm_scalar(along(lambda b, d: b + e * d, base, direction)), 1e-6)
    contracted = jnp.real(jnp.sum(grad * hermitian[name]))  # df = Re sum(grad * dz), as in test_gradients
    np.testing.assert_allclose(contracted, fd, atol=1e-7, err_msg=name)
    # the Hermitian direction itself is not a trivial one for this scalar
    assert abs(float(fd)) > 1e-3


# ------------------------------------------------- near-degenerate pair: second-order Taylor term

def _near_pair_coherence(e):
    """delta * t_max = 2e-4: the pair |0,0>, |1,0> is split by delta, just below NEAR_DEGENERATE."""
    delta = 2e-5
    h_s = jnp.diag(jnp.array([0.0, delta])).astype(complex)
    h_r = jnp.diag(jnp.array([0.0, 1.0])).astype(complex)
    dv = jnp.kron(jnp.array([[0.0, 1.0], [1.0, 0.0]]), jnp.diag(jnp.array([1.0, 0.0]))).astype(complex)
    rho = jnp.diag(jnp.array([0.7, 0.3])).astype(complex)
    traj = qep_jax.evolve(qep_jax.OpenSystem(h_s, [h_r], [1.0], e * dv, rho), jnp.array([0.0, 4.0, 10.0]))
    c = traj.system_state[-1, 0, 1]
    return jnp.stack([jnp.imag(c), jnp.real(c)])


def test_near_degenerate_pair_second_order_term():
    """Kills P10 (sign of the t^2 (E_c - E_a) / 2 term): the mutant gives d Re rho_01(10) = -8.77e-4
    instead of -2.92e-4 (d Im rho_01(10) = 2.92 is unchanged). Tolerances: atol 1e-9 for the small
    Re entry -- the central difference with step 1e-6 has rounding eps / h ~ 1e-10 and truncation
    h^2 f''' / 6 ~ 1e-12 t^3 / 6 ~ 2e-10 at t = 10 (observed 4e-12); rtol 1e-7 for the O(1) Im
    entry, where the Taylor form itself is accurate to ~1e-8 relative (observed 2e-8 absolute,
    the same for steps 1e-5 to 1e-7)."""
    f = jax.jit(_near_pair_coherence)
    forward = jax.jvp(f, (0.0,), (1.0,))[1]
    fd = _central(f, 1e-6)
    np.testing.assert_allclose(np.asarray(forward), np.asarray(fd), rtol=1e-7, atol=1e-9)
    assert abs(float(fd[1])) > 1e-4  # the small entry the second-order term decides is not 0


# ------------------------------------------------- negative times

def _backward_outputs(p, x):
    traj = qep_jax.evolve(qep_jax.SpinGORM(5, p[1], p[0], 2.0).open_system(x), jnp.array([-1.3, -4.0]))
    return jnp.concatenate([traj.heat[:, 0], traj.system_entropy])


def test_derivatives_at_negative_times():
    """Kills P26 (t_max = max(times) instead of max|times|: with t < 0 every pair is treated as
    near-degenerate and the Taylor form is used for all gaps). Tolerances as in test_gradients.py:
    step 1e-5, truncation ~ h^2 f''' ~ 1e-10, rounding ~ eps / h ~ 1e-11."""
    x = qep_jax.goe(jax.random.key(7), 5)
    params = jnp.array([0.3, 0.37])  # (lambda, Delta)
    values = jax.jit(_backward_outputs)
    step = 1e-5
    fd = jnp.stack([(values(params + step * e, x) - values(params - step * e, x)) / (2 * step)
                    for e in jnp.eye(2)], axis=-1)
    forward = jax.jit(jax.jacfwd(_backward_outputs))(params, x)
    reverse = jax.jit(jax.jacrev(_backward_outputs))(params, x)
    np.testing.assert_allclose(forward, fd, atol=1e-7, rtol=1e-6)
    np.testing.assert_allclose(reverse, fd, atol=1e-7, rtol=1e-6)


# ------------------------------------------------- relative entropy at a rank-deficient sigma

def test_relative_entropy_derivative_at_rank_deficient_sigma():
    """Kills E08 (the divided-difference mask ``(x > 0) & (y > 0)`` turned into ``|``: NaN).
    sigma is 3 x 3 of rank 2, rho inside its support (D finite), both in a random complex basis; the
    direction stays inside the support, so the central difference (step 1e-5) is of valid inputs:
    truncation ~ 1e-10, rounding ~ 1e-11, hence atol 1e-8."""
    rng = np.random.default_rng(3)
    u = np.linalg.qr(rng.normal(size=(3, 3)) + 1j * rng.normal(size=(3, 3)))[0]

    def in_support(m2):
        m = np.zeros((3, 3), complex)
        m[:2, :2] = m2
        return jnp.asarray(u @ m @ u.conj().T)

    def state():
        a = random_density_matrix(rng, 2)
        return (a + np.eye(2) / 2) / 2

    def traceless():
        a = random_hermitian(rng, 2)
        return a - np.trace(a) * np.eye(2) / 2

    rho, sigma, d_rho, d_sigma = (in_support(m) for m in (state(), state(), traceless(), traceless()))
    f = jax.jit(lambda e: qep_jax.relative_entropy(rho + e * d_rho, sigma + e * d_sigma))
    value, forward = jax.jvp(f, (0.0,), (1.0,))
    fd = _central(f, 1e-5)
    assert np.isfinite(float(value))
    assert abs(float(fd)) > 1e-3
    np.testing.assert_allclose(float(forward), float(fd), atol=1e-8)
    g_rho, g_sigma = jax.jit(jax.grad(qep_jax.relative_entropy, argnums=(0, 1)))(rho, sigma)
    contracted = jnp.real(jnp.sum(g_rho * d_rho) + jnp.sum(g_sigma * d_sigma))
    np.testing.assert_allclose(float(contracted), float(fd), atol=1e-8)


# ------------------------------------------------- time derivative at t = 0

def test_time_derivative_at_time_zero():
    """Kills W01 (rho_s(0) pinned to the input as a constant: d rho_s / dt at t = 0 becomes 0
    instead of -i Tr_R [H, rho(0)], here 0.134 in Im rho_01). Central difference in t (step 1e-6,
    evolve accepts t = -h): rounding ~ eps / h ~ 1e-10, truncation ~ h^2 ~ 1e-12, hence atol 1e-8."""
    x = qep_jax.goe(jax.random.key(7), 5)
    s = qep_jax.SpinGORM(5, 0.37, 0.3, 2.0).open_system(x)
    system = qep_jax.OpenSystem(s.h_system, s.h_reservoirs, s.betas, s.coupling,
                                np.array([[0.7, 0.3], [0.3, 0.3]]))

    def coherence(times):
        c = qep_jax.evolve(system, times).system_state[:, 0, 1]
        return jnp.stack([jnp.real(c), jnp.imag(c)])  # (2, T)

    later = 1.3
    jac = jax.jit(jax.jacfwd(coherence))(jnp.array([0.0, later]))  # (2, T, T)
    values = jax.jit(lambda t0: coherence(jnp.stack([t0, jnp.asarray(later)]))[:, 0])
    fd = _central(values, 1e-6)
    np.testing.assert_allclose(np.asarray(jac[:, 0, 0]), np.asarray(fd), atol=1e-8)
    assert abs(float(fd[1])) > 0.1  # d Im rho_01 / dt at 0 is clearly non-zero
