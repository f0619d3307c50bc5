"""Gradients of every Trajectory field (issue 6).

References:
* central finite differences in float64 at generic points (step h = 1e-5: truncation error
  ~ h^2 f''' ~ 1e-10 and rounding ~ eps / h ~ 1e-11 for these O(1) functions, so 1e-7 is a
  comfortable tolerance);
* at exact degeneracies, jax derivatives of an independent dense propagation
  ``rho(t) = U rho0 U^dag`` with ``U = jax.scipy.linalg.expm(-i H t)``, Gibbs states from
  ``expm``, dense partial traces and eigenvalue-only entropies -- no eigenvectors of ``H``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import expm

import qep_jax
from qep_jax._evolve import _evolve_kernel

from ._reference import dense_reference, random_density_matrix, random_hermitian

N_LEVELS = 5
TIMES = jnp.array([0.0, 1.3, 4.0])
STEP = 1e-5


def _weights(field_values, salt):
    """Fixed pseudo-random weights so a field's gradient is not a sum that could cancel."""
    n = field_values.size
    return jnp.cos(jnp.arange(1, n + 1) * (1.7 + salt)).reshape(field_values.shape)


def _functionals(fields: dict) -> jnp.ndarray:
    """One scalar per field: a fixed weighted sum of its (real parts of) entries."""
    names = sorted(fields)
    return jnp.stack([jnp.sum(_weights(fields[k], i) * jnp.real(fields[k])) for i, k in enumerate(names)])


def _field_names(fields: dict) -> list[str]:
    return sorted(fields)


def _central_difference(f, p, step=STEP):
    cols = [(f(p + step * e) - f(p - step * e)) / (2 * step) for e in jnp.eye(p.shape[0], dtype=p.dtype)]
    return jnp.stack(cols, axis=-1)


def _trajectory_fields(traj) -> dict:
    out = traj.fields()
    out.pop("times")
    return out


# ---------------------------------------------------------------- spin-GORM (lambda, Delta, beta)


def _spin_gorm_fields(params, x, times=TIMES, n_levels=N_LEVELS):
    lam, delta, beta = params
    model = qep_jax.SpinGORM(n_levels, delta, lam, beta)
    return _trajectory_fields(qep_jax.evolve(model.open_system(x), times))


@pytest.fixture(scope="module")
def goe_matrix():
    return qep_jax.goe(jax.random.key(7), N_LEVELS)


def _weighted(fields):
    return _functionals(fields) @ jnp.arange(1.0, len(fields) + 1)


# Compiled once and shared by the tests below (compile time dominates this file).
spin_values = jax.jit(_spin_gorm_fields)
spin_jacobian = jax.jit(jax.jacfwd(_spin_gorm_fields))  # every entry of every field, d/d(lambda, Delta, beta)
spin_gradient = jax.jit(jax.grad(lambda p, x: _weighted(_spin_gorm_fields(p, x))))


def test_spin_gorm_every_field_matches_central_differences(goe_matrix):
    params = jnp.array([0.3, 0.37, 2.0])
    jac = spin_jacobian(params, goe_matrix)
    assert len(jac) == 15
    for name in jac:
        fd = _central_difference(lambda p: spin_values(p, goe_matrix)[name], params)
        np.testing.assert_allclose(jac[name], fd, atol=1e-7, rtol=1e-6, err_msg=name)
    # reverse mode (the transposed rule) agrees with forward mode
    weights = jnp.arange(1.0, len(jac) + 1)
    forward = jnp.stack([jnp.sum(_weights(spin_values(params, goe_matrix)[k], i)[..., None] * jnp.real(jac[k]),
                                 axis=tuple(range(jac[k].ndim - 1))) for i, k in enumerate(sorted(jac))])
    np.testing.assert_allclose(spin_gradient(params, goe_matrix), weights @ forward, rtol=1e-10)


def test_ensemble_mean_gradient_matches_central_differences(key):
    times = jnp.array([0.5, 3.0])

    def f(p):
        model = qep_jax.SpinGORM(4, p[1], p[0], p[2])
        traj = model.simulate(key, times, 2, batch_size=1, reservoir_entropies=False)
        return _functionals({k: jnp.mean(v, axis=0) for k, v in _trajectory_fields(traj).items()})

    params = jnp.array([0.25, 0.3, 1.5])
    weights = jnp.arange(1.0, 12.0)  # the 11 fields without reservoir entropies
    np.testing.assert_allclose(jax.jit(jax.grad(lambda p: f(p) @ weights))(params),
                               _central_difference(f, params).T @ weights, rtol=1e-7, atol=1e-7)


# ---------------------------------------------------------------- OpenSystem entries, K = 1 and 2


def _open_system_case(n_res, seed, *, pure=False):
    rng = np.random.default_rng(seed)
    d_s, d_r = 2, 3
    dims = (d_s,) + (d_r,) * n_res
    total = int(np.prod(dims))
    base = dict(
        h_system=random_hermitian(rng, d_s),
        h_reservoirs=[random_hermitian(rng, d_r) for _ in range(n_res)],
        betas=np.linspace(0.7, 1.4, n_res),
        coupling=random_hermitian(rng, total, scale=0.4),
        rho_system=random_density_matrix(rng, d_s, pure=pure),
    )
    tangent_rho = random_hermitian(rng, d_s)
    direction = dict(
        h_system=random_hermitian(rng, d_s),
        h_reservoirs=[random_hermitian(rng, d_r) for _ in range(n_res)],
        betas=rng.normal(size=n_res),
        coupling=random_hermitian(rng, total),
        rho_system=tangent_rho - np.trace(tangent_rho) * np.eye(d_s) / d_s,  # keeps unit trace
    )
    return jax.tree_util.tree_map(jnp.asarray, base), jax.tree_util.tree_map(jnp.asarray, direction)


def _along(base, direction, eps, **kw):
    shifted = jax.tree_util.tree_map(lambda b, d: b + eps * d, base, direction)
    return qep_jax.OpenSystem(**shifted, **kw)


OPEN_TIMES = jnp.array([0.0, 0.9, 2.5])


def _open_functionals(eps, base, direction, times=OPEN_TIMES):
    return _functionals(_trajectory_fields(qep_jax.evolve(_along(base, direction, eps), times)))


open_values = jax.jit(_open_functionals)
open_derivative = jax.jit(jax.jacfwd(_open_functionals))  # d/d eps of every field functional
open_gradient = jax.jit(jax.grad(lambda p: _weighted(_trajectory_fields(qep_jax.evolve(qep_jax.OpenSystem(**p),
                                                                                         OPEN_TIMES)))))


@pytest.mark.parametrize("n_res", [1, 2])
def test_open_system_every_field_directional_derivative(n_res):
    base, direction = _open_system_case(n_res, seed=10 + n_res)
    forward = open_derivative(0.0, base, direction)
    assert forward.shape == (15,)  # K = 2 has no eq. 25 but the inter-reservoir correlation instead
    fd = (open_values(STEP, base, direction) - open_values(-STEP, base, direction)) / (2 * STEP)
    np.testing.assert_allclose(forward, fd, atol=1e-7, rtol=1e-6)
    # reverse mode: gradient with respect to every entry of every input, contracted with the direction
    # (jax.grad of a real function of complex z returns df/dx - i df/dy, so df = Re sum(grad * dz)).
    grads = open_gradient(base)
    contracted = sum(jnp.real(jnp.sum(g * d)) for g, d in
                     zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)))
    np.testing.assert_allclose(contracted, forward @ jnp.arange(1.0, 16.0), rtol=1e-9)


def _real_open_case(n_res, seed, pure):
    rng = np.random.default_rng(seed)
    d_s, d_r = 2, 3
    total = d_s * d_r**n_res

    def entries():
        return dict(
            h_system=random_hermitian(rng, d_s, real=True),
            h_reservoirs=[random_hermitian(rng, d_r, real=True) for _ in range(n_res)],
            coupling=random_hermitian(rng, total, real=True, scale=0.4),
        )

    rho_system = random_density_matrix(rng, d_s, pure=pure, real=True)
    if not pure:  # well inside the mixed states: central differences of S_s stay accurate
        rho_system = (rho_system + np.eye(d_s) / d_s) / 2
    base = dict(entries(), betas=np.linspace(0.7, 1.4, n_res), rho_system=rho_system)
    tangent_rho = random_hermitian(rng, d_s, real=True)
    # At a pure rho_s(0) the entropy derivative along drho_s is infinite (docs/gradients.md): keep rho_s there.
    tangent_rho = 0 * tangent_rho if pure else tangent_rho - np.trace(tangent_rho) * np.eye(d_s) / d_s
    direction = dict(entries(), betas=rng.normal(size=n_res), rho_system=tangent_rho)
    return jax.tree_util.tree_map(jnp.asarray, base), jax.tree_util.tree_map(jnp.asarray, direction)


@functools.partial(jax.jit, static_argnums=3)
def _real_or_complex_functionals(eps, base, direction, as_complex):
    p = jax.tree_util.tree_map(lambda b, d: b + eps * d, base, direction)
    if as_complex:
        p = {k: v if k == "betas" else jax.tree_util.tree_map(lambda m: m.astype(complex), v) for k, v in p.items()}
    times = OPEN_TIMES + eps * jnp.array([0.0, 0.4, -0.7])
    return _functionals(_trajectory_fields(qep_jax.evolve(qep_jax.OpenSystem(**p), times)))


@pytest.mark.parametrize("n_res,pure", [(1, False), (2, False), (1, True)])
def test_real_tangent_path_matches_complex_path(n_res, pure):
    """Real H, dH and states take the real-arithmetic tangent of the reservoir entropies; it must
    give the complex path's derivative (same inputs cast to complex) and the central difference,
    along every entry at once including the time points."""
    base, direction = _real_open_case(n_res, seed=40 + n_res, pure=pure)
    derivative = jax.jacfwd(_real_or_complex_functionals)
    real = derivative(0.0, base, direction, False)
    np.testing.assert_allclose(real, derivative(0.0, base, direction, True), atol=1e-10, rtol=1e-10)
    fd = (_real_or_complex_functionals(STEP, base, direction, False)
          - _real_or_complex_functionals(-STEP, base, direction, False)) / (2 * STEP)
    np.testing.assert_allclose(real, fd, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------- independent dense expm reference


def _partial_trace(rho, dims, keep):
    n = len(dims)
    tensor = rho.reshape(tuple(dims) * 2)
    rows = list(range(n))
    cols = [n + i if i in keep else i for i in range(n)]
    out = list(keep) + [n + i for i in keep]
    d = int(np.prod([dims[k] for k in keep]))
    return jnp.einsum(tensor, rows + cols, out).reshape(d, d)


def _kron_all(mats):
    return functools.reduce(jnp.kron, mats)


def _gibbs(h, beta):
    g = expm(-beta * h)
    return g / jnp.trace(g)


def dense_fields(h_s, h_rs, betas, coupling, rho_s0, times):
    """Every Trajectory field from the dense state, differentiable, without eigenvectors of H."""
    vn, rel = qep_jax.von_neumann_entropy, qep_jax.relative_entropy
    dims = (h_s.shape[0],) + tuple(h.shape[0] for h in h_rs)
    n_res = len(h_rs)
    eye = [jnp.eye(d) for d in dims]
    embed = lambda op, k: _kron_all([op if i == k else eye[i] for i in range(len(dims))])  # noqa: E731
    h = embed(h_s, 0) + coupling + sum(embed(hr, r + 1) for r, hr in enumerate(h_rs))
    eqs = [_gibbs(hr, b) for hr, b in zip(h_rs, betas)]
    rho0 = _kron_all([rho_s0] + eqs)
    energy0 = jnp.stack([jnp.real(jnp.trace(hr @ e)) for hr, e in zip(h_rs, eqs)])
    log_z = sum(jnp.log(jnp.real(jnp.trace(expm(-b * hr)))) for hr, b in zip(h_rs, betas))
    s0 = vn(rho_s0)
    rho_s_eq = _gibbs(h_s, betas[0])

    def at(t):
        u = expm(-1j * t * h.astype(complex))
        rho = u @ rho0 @ u.conj().T
        rho_s = _partial_trace(rho, dims, (0,))
        rho_rs = [_partial_trace(rho, dims, (r + 1,)) for r in range(n_res)]
        rho_res = _partial_trace(rho, dims, tuple(range(1, n_res + 1)))
        s, s_tot = vn(rho_s), vn(rho)
        s_r = jnp.stack([vn(x) for x in rho_rs])
        e_r = jnp.stack([jnp.real(jnp.trace(hr @ x)) for hr, x in zip(h_rs, rho_rs)])
        heat = energy0 - e_r
        flow = heat @ jnp.asarray(betas)
        out = dict(
            system_state=rho_s, system_entropy=s, system_energy=jnp.real(jnp.trace(h_s @ rho_s)),
            interaction_energy=jnp.real(jnp.trace(coupling @ rho)), reservoir_energy=e_r, heat=heat,
            # eq. 10 as -S(rho) - Tr rho ln(rho_s (x) prod rho_r^eq) with ln rho_r^eq = -beta_r H_r - ln Z_r
            # written out densely (no support threshold, which would drop tiny eigenvalues of rho_s).
            entropy_flow=flow, entropy_production=-s_tot + s + jnp.sum(jnp.asarray(betas) * e_r) + log_z,
            entropy_production_balance=s - s0 - flow, reservoir_entropy=s_r,
            mutual_information=s + vn(rho_res) - s_tot, correlation_entropy=s_tot - s - jnp.sum(s_r),
            reservoir_relative_entropy=jnp.stack([rel(x, e) for x, e in zip(rho_rs, eqs)]),
        )
        if n_res == 1:
            out["entropy_production_open"] = rel(rho_s0, rho_s_eq) - rel(rho_s, rho_s_eq)
        else:
            out["inter_reservoir_correlation"] = jnp.sum(s_r) - vn(rho_res)
        return out

    fields = jax.lax.map(at, jnp.asarray(times))
    fields["total_entropy"] = vn(rho0)
    return fields


def _spin_gorm_dense(params, x, times=TIMES, n_levels=N_LEVELS):
    lam, delta, beta = params
    model = qep_jax.SpinGORM(n_levels, delta, lam, beta)
    s = model.open_system(x)
    return dense_fields(s.h_system, list(s.h_reservoirs), s.betas, s.coupling, s.rho_system, times)


dense_spin_jacobian = jax.jit(jax.jacfwd(_spin_gorm_dense))

SPACING = 1.0 / (N_LEVELS - 1)
DEGENERATE_POINTS = [
    (0.0, SPACING, 2.0),  # lambda = 0 and Delta = level spacing: |1,e_k> and |0,e_k+1> degenerate
    (1e-6, SPACING, 2.0),  # nearly degenerate: splitting ~ 1e-7, Taylor branch of the rule
    (1e-4, SPACING, 2.0),  # nearly degenerate: splitting ~ 1e-5, divided-difference branch
    (0.0, 0.37, 2.0),  # lambda = 0 at a generic Delta
    (0.2, SPACING, 2.0),  # Delta on the level spacing at finite coupling
]


@pytest.mark.parametrize("params", [(0.3, 0.37, 2.0), (0.0, SPACING, 2.0)])
def test_values_agree_with_dense_reference(goe_matrix, params):
    """The rule changes derivatives only: values equal the dense numpy reference, also at a degenerate point."""
    lam, delta, beta = params
    s = qep_jax.SpinGORM(N_LEVELS, delta, lam, beta).open_system(goe_matrix)
    ref = dense_reference(*(np.asarray(a) for a in (s.h_system,)), [np.asarray(s.h_reservoirs[0])],
                          np.asarray(s.betas), np.asarray(s.coupling), np.asarray(s.rho_system), np.asarray(TIMES))
    ref["total_entropy"] = np.asarray(ref["total_entropy"])
    ours = spin_values(jnp.array(params), goe_matrix)
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], atol=1e-10, err_msg=k)


@pytest.mark.parametrize("params", DEGENERATE_POINTS)
def test_degenerate_points_match_expm_reference(goe_matrix, params):
    params = jnp.array(params)
    jac = spin_jacobian(params, goe_matrix)
    ref = dense_spin_jacobian(params, goe_matrix)
    for name in jac:
        assert np.all(np.isfinite(jac[name])), name
        # Both are derivatives of D = 10 dense computations: they differ by rounding, 1e-8 absolute.
        np.testing.assert_allclose(jac[name], ref[name], atol=1e-8, rtol=1e-7, err_msg=name)


def test_fully_degenerate_open_system_matches_expm_reference():
    """H_s = 0, H_r with a degenerate pair, V = 0: derivative along (dH_s, dH_r, dbeta, dV, drho_s).

    rho_s(0) is mixed here: at a pure state the derivative of an entropy along a direction that
    populates an empty level is infinite and each finite convention differs (docs/gradients.md)."""
    _, direction = _open_system_case(1, seed=3)
    base = dict(h_system=jnp.zeros((2, 2), complex), h_reservoirs=[jnp.diag(jnp.array([0.0, 0.5, 0.5], complex))],
                betas=jnp.array([1.2]), coupling=jnp.zeros((6, 6), complex),
                rho_system=jnp.diag(jnp.array([0.8, 0.2], complex)))
    times = OPEN_TIMES

    def ref(eps):
        s = _along(base, direction, eps)
        return _functionals(dense_fields(s.h_system, list(s.h_reservoirs), s.betas, s.coupling, s.rho_system, times))

    ours = open_derivative(0.0, base, direction)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, jax.jit(jax.jacfwd(ref))(0.0), atol=1e-8, rtol=1e-7)
    grads = open_gradient(base)
    contracted = sum(jnp.real(jnp.sum(g * d)) for g, d in
                     zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)))
    np.testing.assert_allclose(contracted, ours @ jnp.arange(1.0, 16.0), rtol=1e-9)


def _declared_diagonal_functionals(eps, base, direction, times=OPEN_TIMES):
    system = _along(base, direction, eps, diagonal_reservoirs=True)
    return _functionals(_trajectory_fields(qep_jax.evolve(system, times)))


diagonal_derivative = jax.jit(jax.jacfwd(_declared_diagonal_functionals))
diagonal_gradient = jax.jit(jax.grad(lambda p: _weighted(_trajectory_fields(qep_jax.evolve(
    qep_jax.OpenSystem(**p, diagonal_reservoirs=True), OPEN_TIMES)))))


@pytest.mark.parametrize("n_res, degenerate", [(1, True), (2, False)])
def test_declared_diagonal_reservoirs_keep_every_derivative(n_res, degenerate):
    """``diagonal_reservoirs=True`` takes the Gibbs states and reservoir observables from the
    diagonals; only the value is diagonal, so tangents of ``H_r`` off the diagonal (the random
    ``direction``) must come out as on the general path, also at a degenerate ``H_r``."""
    base, direction = _open_system_case(n_res, seed=20 + n_res)
    levels = [jnp.array([0.0, 0.5, 0.5]), jnp.array([-0.3, 0.1, 0.4])][:n_res]
    base["h_reservoirs"] = [jnp.diag(e).astype(complex) for e in levels]
    if degenerate:
        base["h_system"] = jnp.zeros((2, 2), complex)
    ours = diagonal_derivative(0.0, base, direction)
    general = open_derivative(0.0, base, direction)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, general, atol=1e-10, rtol=1e-9)
    ours_reverse, general_reverse = diagonal_gradient(base), open_gradient(base)
    for a, b in zip(jax.tree_util.tree_leaves(ours_reverse), jax.tree_util.tree_leaves(general_reverse)):
        np.testing.assert_allclose(a, b, atol=1e-10, rtol=1e-9)


# ---------------------------------------------------------------- t = 0 and pure states


def test_time_zero_and_pure_state(goe_matrix):
    """At t = 0 with the pure spin state: D_iS = I = D[rho_r||rho_r^eq] = Q = 0 for every parameter,
    so their gradients vanish; S(0) = 0 (0 ln 0 = 0) with a zero gradient; everything finite."""
    params = jnp.array([0.3, 0.37, 2.0])
    values = spin_values(params, goe_matrix)
    jac = spin_jacobian(params, goe_matrix)
    for name in jac:
        assert np.all(np.isfinite(jac[name])), name
    for name in ["entropy_production", "entropy_production_balance", "entropy_production_open",
                 "mutual_information", "correlation_entropy", "reservoir_relative_entropy", "heat",
                 "entropy_flow", "system_entropy"]:
        np.testing.assert_allclose(values[name][0], 0.0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(jac[name][0], 0.0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("rho_s0", [[1.0, 0.0], [0.5, 0.5]], ids=["pure", "maximally-mixed"])
def test_time_zero_derivative_with_respect_to_rho_s_vanishes(goe_matrix, rho_s0):
    """D_iS(0) = I(0) = 0 for every rho_s(0), so their derivatives along rho_s(0) vanish. The series
    rebuilt rho_s(t = 0) with a rounding eigenvalue ~eps, and d D_iS(0) came out ~34 at |0><0|."""
    s = qep_jax.SpinGORM(N_LEVELS, 0.37, 0.3, 2.0).open_system(goe_matrix)

    def at_zero(rho):
        traj = qep_jax.evolve(qep_jax.OpenSystem(s.h_system, s.h_reservoirs, s.betas, s.coupling, rho),
                              jnp.array([0.0, 1.0]))
        return jnp.stack([traj.entropy_production[0], traj.mutual_information[0],
                          traj.system_entropy[0] - qep_jax.von_neumann_entropy(rho)])

    rho = jnp.diag(jnp.array(rho_s0))
    values, derivative = jax.jvp(at_zero, (rho,), (jnp.diag(jnp.array([-1.0, 1.0])),))
    np.testing.assert_allclose(values, 0.0, atol=1e-14)
    np.testing.assert_allclose(derivative, 0.0, atol=1e-12)


def test_pure_state_derivative_with_respect_to_rho_s():
    """At rho_s(0) = |0><0| the derivative along diag(-1, 1) (into the state space) is finite; the
    quantities linear in rho_s(0) match a one-sided difference (exact for linear functions)."""
    base, direction = _open_system_case(1, seed=5)
    base = dict(base, rho_system=jnp.diag(jnp.array([1.0, 0.0], complex)))
    zero = jax.tree_util.tree_map(jnp.zeros_like, direction)
    direction = dict(zero, rho_system=jnp.diag(jnp.array([-1.0, 1.0], complex)))
    d = open_derivative(0.0, base, direction)
    assert np.all(np.isfinite(d))
    one_sided = (open_values(1e-6, base, direction) - open_values(0.0, base, direction)) / 1e-6
    names = sorted(_trajectory_fields(qep_jax.evolve(_along(base, direction, 0.0), OPEN_TIMES)))
    for i, name in enumerate(names):
        if name in ("heat", "interaction_energy", "reservoir_energy", "system_energy", "system_state"):
            np.testing.assert_allclose(d[i], one_sided[i], atol=1e-8, err_msg=name)


# ---------------------------------------------------------------- transformations


def _sigma_z_loss(params, x):
    lam, delta = params
    traj = qep_jax.evolve(qep_jax.SpinGORM(N_LEVELS, delta, lam, 2.0).open_system(x), TIMES,
                          reservoir_entropies=False)
    sz = jnp.real(traj.system_state[:, 1, 1] - traj.system_state[:, 0, 0])
    return jnp.sum(sz**2) + jnp.sum(traj.entropy_production)


@pytest.mark.parametrize("full", [False, True])
def test_reverse_mode_over_the_times_together_with_a_parameter(goe_matrix, full):
    """jax.grad over (lambda, times) in one call: the d<O>/dt weights sat in the tangent-linear stack of
    the JVP rule, and reverse mode failed to transpose it (AssertionError inside evolve)."""

    def loss(lam, times):
        traj = qep_jax.evolve(qep_jax.SpinGORM(N_LEVELS, 0.37, lam, 2.0).open_system(goe_matrix), times,
                              reservoir_entropies=full)
        return jnp.sum(traj.heat) + (jnp.sum(traj.mutual_information) if full else jnp.sum(traj.entropy_production))

    times = jnp.array([0.7, 3.0])
    d_lam, d_times = jax.grad(loss, argnums=(0, 1))(0.3, times)
    f_lam, f_times = jax.jacfwd(loss, argnums=(0, 1))(0.3, times)
    np.testing.assert_allclose([d_lam, *d_times], [f_lam, *f_times], rtol=1e-10, atol=1e-13)
    fd_lam = (loss(0.3 + STEP, times) - loss(0.3 - STEP, times)) / (2 * STEP)
    fd_t = [(loss(0.3, times.at[i].add(STEP)) - loss(0.3, times.at[i].add(-STEP))) / (2 * STEP) for i in range(2)]
    np.testing.assert_allclose([d_lam, *d_times], [fd_lam, *fd_t], rtol=1e-6, atol=1e-9)


def test_jit_grad_equals_grad_and_vmap_equals_loop(goe_matrix):
    points = jnp.array([[0.3, 0.37], [0.0, SPACING], [1e-6, SPACING]])
    grad = jax.grad(_sigma_z_loss)
    looped = jnp.stack([grad(p, goe_matrix) for p in points])
    jitted = jnp.stack([jax.jit(grad)(p, goe_matrix) for p in points])
    vmapped = jax.vmap(grad, in_axes=(0, None))(points, goe_matrix)
    assert np.all(np.isfinite(looped))
    # atol: at lambda = 1e-6 the spin stays nearly pure (smallest eigenvalue of rho_s ~ lambda^2 ~ 1e-12),
    # so dS = -ln p dp turns the O(eps) rounding of p into ~1e-9 absolute in d/dlambda, whichever way
    # XLA associates the sums (vs. a 60-digit mpmath reference: eager -1.5e-9, jit -1.3e-9 of 3.6e-5).
    np.testing.assert_allclose(jitted, looped, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(vmapped, looped, rtol=1e-10, atol=1e-12)


def test_checkpoint_does_not_change_gradients(goe_matrix):
    def loss(p, checkpoint):
        model = qep_jax.SpinGORM(N_LEVELS, p[1], p[0], 2.0)
        traj = _evolve_kernel(model.open_system(goe_matrix), TIMES, reservoir_entropies=False, time_batch_size=2,
                              system_rank=1, rebuilt_entry=0, checkpoint=checkpoint)
        return jnp.sum(traj.entropy_production) + jnp.sum(traj.interaction_energy)

    p = jnp.array([0.3, 0.37])
    with_checkpoint = jax.jit(jax.grad(loss), static_argnums=1)
    np.testing.assert_allclose(with_checkpoint(p, True), with_checkpoint(p, False), rtol=1e-12)


def test_second_derivatives_through_the_cpu_eigh_callbacks(goe_matrix):
    """Reverse over forward runs through the batched host eigh inside the time loops (it used to
    raise 'Pure callbacks do not support JVP') and matches central differences of the gradient."""
    def loss(p):
        model = qep_jax.SpinGORM(N_LEVELS, p[1], p[0], 2.0)
        traj = qep_jax.evolve(model.open_system(goe_matrix), TIMES, reservoir_entropies=True, time_batch_size=2)
        return jnp.sum(traj.mutual_information) + jnp.sum(traj.entropy_production)

    p = jnp.array([0.3, 0.37])
    hessian = jax.jacrev(jax.jacfwd(loss))(p)
    gradient, h = jax.grad(loss), 1e-5
    fd = jnp.stack([(gradient(p + h * e) - gradient(p - h * e)) / (2 * h) for e in jnp.eye(2)])
    np.testing.assert_allclose(hessian, fd, atol=1e-6 * float(jnp.max(jnp.abs(fd))))
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-10)


def test_near_degenerate_pairs_above_the_threshold_keep_relative_accuracy():
    """Delta = 2 level spacings, lambda = 3e-6: pairs split by ~1e-6 with t_max = 11 sit just above a
    threshold of 1e-5, where the far form lost 18% of d heat / d Delta (a 60-digit mpmath value is
    1.5909360e-11); the dense expm reference is good to ~2e-6 relative here."""
    n = 8
    x = qep_jax.goe(jax.random.key(0), n)
    times = jnp.array([0.0, 0.7, 3.0, 11.0])

    def heat(delta):
        return qep_jax.evolve(qep_jax.SpinGORM(n, delta, 3e-6, 2.0).open_system(x), times,
                              reservoir_entropies=False).heat[-1, 0]

    def dense_heat(delta):
        return _spin_gorm_dense(jnp.array([3e-6, delta, 2.0]), x, times, n)["heat"][-1, 0]

    delta = 2.0 / (n - 1)
    ours = jax.jvp(heat, (delta,), (1.0,))[1]
    ref = jax.jvp(dense_heat, (delta,), (1.0,))[1]
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def _mu_system(mu):
    rng = np.random.default_rng(9)
    h_s = random_hermitian(rng, 2, real=True, scale=0.5)
    h_r = np.diag(np.sort(rng.normal(size=4)))
    coupling = random_hermitian(rng, 8, real=True, scale=0.2)
    return qep_jax.OpenSystem(h_s, [h_r], [0.8], coupling, np.array([[0.6, 0.1], [0.1, 0.4]]),
                              chemical_potentials=[mu], number_operators=[np.diag(np.arange(4.0))])


def test_forward_mode_under_jit_over_a_chemical_potential():
    """d I / d mu in every mode against central differences. jax.jit(jax.jacfwd(...)) gave -0.241
    instead of -0.029 on the CPU: the Gibbs state's divided difference tested its argument for
    exactly 0, and XLA evaluated that argument twice with different rounding (0 for the test,
    ~1e-17 for the quotient), so the diagonal became expm1(1) / 1 (docs/gradients.md)."""
    times = np.array([0.7, 2.5])

    def info(mu):
        return qep_jax.evolve(_mu_system(mu), times).mutual_information

    h = 1e-6
    central = (np.asarray(info(0.1 + h)) - np.asarray(info(0.1 - h))) / (2 * h)
    for name, derivative in [("jacrev", jax.jacrev(info)), ("jacfwd", jax.jacfwd(info)),
                             ("jit(jacfwd)", jax.jit(jax.jacfwd(info))), ("jit(jacrev)", jax.jit(jax.jacrev(info)))]:
        np.testing.assert_allclose(np.asarray(derivative(0.1)), central, atol=1e-8, err_msg=name)


def test_expm1_ratio_against_50_digit_arithmetic():
    """The Gibbs divided difference expm1(y) / y (y <= 0): series below |y| = 1e-3, quotient above,
    both to rounding; at the switch point the two forms agree, so a decision split between two
    evaluations of y costs nothing."""
    mpmath = pytest.importorskip("mpmath")
    from qep_jax._propagator_rules import _expm1_ratio

    mpmath.mp.dps = 50
    ys = np.array([0.0, -1e-300, -1e-17, -1e-9, -3e-5, -9.999999999999e-4, -1e-3, -1.000000000001e-3,
                   -0.02, -1.0, -30.0, -700.0])
    got = np.asarray(jax.jit(_expm1_ratio)(jnp.asarray(ys)))
    exact = np.array([1.0 if y == 0 else float(mpmath.expm1(mpmath.mpf(y)) / mpmath.mpf(y)) for y in ys])
    np.testing.assert_allclose(got, exact, rtol=1e-15, atol=0)  # a few ulp: expm1, then a quotient
    at_switch = -1e-3
    series = 1 + at_switch / 2 * (1 + at_switch / 3 * (1 + at_switch / 4 * (1 + at_switch / 5)))
    np.testing.assert_allclose(series, np.expm1(at_switch) / at_switch, rtol=1e-15)


def test_gibbs_derivative_at_a_near_degenerate_reservoir_pair():
    """H_r levels 8e-4 apart at beta = 1 (inside the series region of expm1(y) / y, not degenerate),
    varied along the coupling of that pair: jvp against central differences. Taking the degenerate
    limit 1 there instead was off by 1e-5 to 3e-5."""
    rng = np.random.default_rng(11)
    h_s = random_hermitian(rng, 2)
    coupling = random_hermitian(rng, 6, scale=0.4)
    h_r = np.diag([0.0, 8e-4, 1.0]).astype(complex)
    direction = np.zeros((3, 3), complex)
    direction[0, 1] = direction[1, 0] = 1.0
    rho_s = np.array([[0.7, 0.2 - 0.1j], [0.2 + 0.1j, 0.3]])
    times = jnp.array([0.9, 2.5])

    @jax.jit
    def series(e):
        traj = qep_jax.evolve(qep_jax.OpenSystem(h_s, [h_r + e * direction], [1.0], coupling, rho_s), times)
        return jnp.concatenate([traj.heat[:, 0], traj.reservoir_entropy[:, 0], jnp.real(traj.system_state[:, 0, 1])])

    tangent = np.asarray(jax.jvp(series, (0.0,), (1.0,))[1])
    h = 1e-6
    np.testing.assert_allclose(tangent, (np.asarray(series(h)) - np.asarray(series(-h))) / (2 * h), atol=1e-9)
