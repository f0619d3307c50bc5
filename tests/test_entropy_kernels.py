"""Entropy kernels and partial trace against NumPy/SciPy and (optionally) QuTiP; finite gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import qep_jax

from ._reference import entropy, random_density_matrix, random_hermitian, reduced, relative_entropy


@pytest.mark.parametrize("pure", [False, True])
@pytest.mark.parametrize("real", [False, True])
def test_von_neumann_entropy_matches_numpy(pure, real):
    rng = np.random.default_rng(1)
    rho = random_density_matrix(rng, 5, pure=pure, real=real)
    assert abs(float(qep_jax.von_neumann_entropy(rho)) - entropy(rho)) < 1e-12


def test_entropy_batched_and_known_values():
    rhos = np.stack([np.eye(4) / 4, np.diag([1.0, 0, 0, 0]), np.diag([0.5, 0.5, 0, 0])])
    np.testing.assert_allclose(qep_jax.von_neumann_entropy(rhos), [np.log(4), 0.0, np.log(2)], atol=1e-14)


def test_entropy_tiny_negative_eigenvalues_are_clipped():
    rho = np.diag([1.0 + 2e-17, -2e-17, 0.0])
    value, grad = jax.value_and_grad(qep_jax.von_neumann_entropy)(jnp.asarray(rho))
    assert np.isfinite(value) and abs(value) < 1e-15
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("rho", [-np.eye(2) / 2, [[-0.3, 0.1], [0.1, -0.6]], np.diag([0.7, -0.3]),
                                 [[0.2, 0.5], [0.5, 0.1]]])
def test_qubit_entropy_of_a_non_positive_matrix_follows_the_general_rule(rho):
    """The 2 x 2 closed form and the general path agree beyond density matrices: negative
    eigenvalues contribute 0 (the closed form of a negative-definite matrix gave 0.35 instead)."""
    rho = np.asarray(rho, float)
    embedded = np.zeros((3, 3))
    embedded[:2, :2] = rho  # a 3 x 3 matrix takes the eigenvalue path
    expected = -sum(x * np.log(x) for x in np.linalg.eigvalsh(rho) if x > 0)
    np.testing.assert_allclose(float(qep_jax.von_neumann_entropy(rho)), expected, atol=1e-15)
    np.testing.assert_allclose(float(qep_jax.von_neumann_entropy(embedded)), expected, atol=1e-15)


@pytest.mark.parametrize("complex_", [False, True])
def test_qubit_entropy_near_a_pure_state_to_relative_precision(complex_):
    """A 2 x 2 state within ~7e-15 of pure: the eigensolver's smaller eigenvalue (absolute error
    ~eps) made S 1e-2 off, and ln(lambda_max) of 1 - lambda_min rounded to 1 dropped ~lambda_min.
    Reference: the eigenvalues of the same float64 entries at 50 digits; the derivative too."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    p, c = 2.0**-47, (1e-8 + 3e-9j if complex_ else 1e-8)  # 1 - p is exact: unit trace as given
    rho = np.array([[1 - p, c], [np.conj(c), p]])
    exact = mp.matrix([[mp.mpmathify(complex(v)) for v in row] for row in rho])
    lam = [mp.re(x) for x in mp.eighe(exact)[0]]
    expected = float(-sum(x * mp.log(x) for x in lam))
    assert abs(float(qep_jax.von_neumann_entropy(rho)) - expected) < 1e-12 * expected
    # dS = -Tr[(ln rho + 1) d rho] along d rho = |1><1| - |0><0|, by the 50-digit eigendecomposition.
    direction = np.diag([-1.0, 1.0]).astype(rho.dtype)
    vals, vecs = mp.eighe(exact)
    log_rho = vecs * mp.diag([mp.log(mp.re(x)) for x in vals]) * vecs.transpose_conj()
    slope = float(mp.re(-(log_rho[1, 1] - log_rho[0, 0])))
    got = jax.jvp(qep_jax.von_neumann_entropy, (rho,), (direction,))[1]
    assert abs(float(got) - slope) < 1e-10 * abs(slope)
    # float32 (eigenvalue error ~6e-8): S ~ 2e-9 came out as noise before. 1 - p rounds to 1 here;
    # the state meant is the unit-trace one, [[1 - p, c], [c, p]].
    single = np.array([[1.0, 1e-6], [1e-6, 1e-10]], np.float32)
    p, c = mp.mpf(float(single[1, 1])), mp.mpf(float(single[0, 1]))
    lam = [mp.re(x) for x in mp.eighe(mp.matrix([[1 - p, c], [c, p]]))[0]]
    expected = float(-sum(x * mp.log(x) for x in lam))
    with jax.enable_x64(False):
        assert abs(float(qep_jax.von_neumann_entropy(single)) - expected) < 1e-5 * expected


def test_relative_entropy_matches_scipy_logm():
    rng = np.random.default_rng(2)
    a = random_density_matrix(rng, 4)
    b = random_density_matrix(rng, 4)
    expected = np.real(np.trace(a @ (scipy.linalg.logm(a) - scipy.linalg.logm(b))))
    assert abs(float(qep_jax.relative_entropy(a, b)) - expected) < 1e-11
    assert abs(float(qep_jax.relative_entropy(a, a))) < 1e-12


def test_relative_entropy_pure_first_argument_and_infinite_case():
    rng = np.random.default_rng(3)
    a = random_density_matrix(rng, 3, pure=True)
    b = random_density_matrix(rng, 3)
    assert abs(float(qep_jax.relative_entropy(a, b)) - relative_entropy(a, b)) < 1e-11
    # Support of rho outside the support of sigma: D = +inf, never NaN.
    assert float(qep_jax.relative_entropy(np.diag([0.5, 0.5]), np.diag([1.0, 0.0]))) == np.inf
    # Zero weight outside the support: finite.
    assert abs(float(qep_jax.relative_entropy(np.diag([1.0, 0.0]), np.diag([0.5, 0.5]))) - np.log(2)) < 1e-14


def test_logm_hermitian_matches_scipy():
    rng = np.random.default_rng(4)
    a = random_density_matrix(rng, 5) + 0.1 * np.eye(5)
    np.testing.assert_allclose(qep_jax.logm_hermitian(a), scipy.linalg.logm(a), atol=1e-12)


def _central_difference(f, x, direction, h=1e-4):
    """Richardson-extrapolated central difference: truncation error O(h^4), rounding ~eps/h."""

    def d(step):
        return (f(x + step * direction) - f(x - step * direction)) / (2 * step)

    return (4 * d(h / 2) - d(h)) / 3


def _hermitian_direction(rng, n, traceless=True):
    d = random_hermitian(rng, n)
    if traceless:
        d = d - np.trace(d) / n * np.eye(n)
    return d


@pytest.mark.parametrize("kind", ["generic", "degenerate"])
def test_entropy_gradient_matches_finite_differences(kind):
    rng = np.random.default_rng(5)
    if kind == "generic":
        rho = random_density_matrix(rng, 4)
    else:  # exactly degenerate spectrum (0.3, 0.3, 0.2, 0.2) in a random basis
        u = np.linalg.qr(rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4)))[0]
        rho = u @ np.diag([0.3, 0.3, 0.2, 0.2]) @ u.conj().T
    direction = _hermitian_direction(rng, 4)
    _, tangent = jax.jvp(qep_jax.von_neumann_entropy, (jnp.asarray(rho),), (jnp.asarray(direction),))
    fd = _central_difference(lambda x: float(qep_jax.von_neumann_entropy(x)), rho, direction)
    assert np.isfinite(tangent)
    assert abs(float(tangent) - fd) < 1e-7
    grad = jax.grad(lambda x: qep_jax.von_neumann_entropy(x).real)(jnp.asarray(rho))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("kind", ["generic", "degenerate", "close"])
def test_relative_entropy_gradient_matches_finite_differences(kind):
    rng = np.random.default_rng(6)
    a = random_density_matrix(rng, 3)
    if kind == "generic":
        b = random_density_matrix(rng, 3)
    elif kind == "degenerate":
        b = np.eye(3, dtype=complex) / 3
    else:  # eigenvalues 1e-9 apart: divided differences must not cancel catastrophically
        u = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        b = (u @ np.diag([0.4, 0.4 + 1e-9, 0.2 - 1e-9]) @ u.T).astype(complex)
    da = _hermitian_direction(rng, 3)
    db = _hermitian_direction(rng, 3)

    def f(x):
        return qep_jax.relative_entropy(x[0], x[1])

    _, tangent = jax.jvp(f, ((jnp.asarray(a), jnp.asarray(b)),), ((jnp.asarray(da), jnp.asarray(db)),))
    fd = _central_difference(lambda s: float(f((a + s * da, b + s * db))), 0.0, 1.0)
    assert abs(float(tangent) - fd) < 1e-7


def test_logm_derivative_matches_finite_differences():
    rng = np.random.default_rng(7)
    a = random_density_matrix(rng, 4) + 0.05 * np.eye(4)
    d = random_hermitian(rng, 4)
    _, tangent = jax.jvp(qep_jax.logm_hermitian, (jnp.asarray(a),), (jnp.asarray(d),))
    fd = (scipy.linalg.logm(a + 1e-6 * d) - scipy.linalg.logm(a - 1e-6 * d)) / 2e-6
    np.testing.assert_allclose(tangent, fd, atol=1e-7)


def test_logm_derivative_along_a_non_hermitian_direction():
    """logm reads herm(a) (eigh does), so its tangent along d is the one along herm(d); the JVP used d
    itself (non-Hermitian tangent, and a wrong jax.grad w.r.t. one matrix entry)."""
    rng = np.random.default_rng(8)
    a = jnp.asarray(random_density_matrix(rng, 3, real=True) + 0.05 * np.eye(3))
    e01 = jnp.zeros((3, 3)).at[0, 1].set(1.0)
    _, along = jax.jvp(qep_jax.logm_hermitian, (a,), (e01,))
    _, along_herm = jax.jvp(qep_jax.logm_hermitian, (a,), ((e01 + e01.T) / 2,))
    np.testing.assert_allclose(along, along_herm, atol=1e-14)
    entry = lambda m: qep_jax.logm_hermitian(m)[0, 2]  # noqa: E731
    fd = (entry(a + 1e-6 * e01) - entry(a - 1e-6 * e01)) / 2e-6  # the value sees herm(a + h e01)
    assert abs(float(jax.grad(entry)(a)[0, 1]) - float(fd)) < 1e-7


@pytest.mark.parametrize("ratio", [1e-3, 1e-10, 1e-14, 1.0 - 1e-6, 1.0 + 1e-9, 1.0 + 5e-5, 1.0 + 9.9999e-5,
                                   1.0 + 1.0001e-4, 1.0 + 2e-4, 1.0 + 1e-3, 1.0 + 9e-3])
def test_log_divided_difference_against_50_digit_arithmetic(ratio):
    """(ln x - ln y) / (x - y) for eigenvalues far apart (the log1p form lost eps y/x there, 2.5e-5 at
    1e-14, and was asymmetric) and close together (where the plain quotient would cancel)."""
    import decimal

    from qep_jax._entropy import _log_divided_difference

    decimal.getcontext().prec = 50
    x, y = ratio * 0.6, 0.6
    dx, dy = decimal.Decimal(x), decimal.Decimal(y)
    exact = float((dx.ln() - dy.ln()) / (dx - dy))
    got = np.asarray(_log_divided_difference(jnp.array([x, y])))
    np.testing.assert_allclose([got[0, 1], got[1, 0]], exact, rtol=1e-14)
    np.testing.assert_allclose(np.diag(got), [1 / x, 1 / y], rtol=1e-15)


def test_entropy_gradient_finite_at_pure_state():
    rho = jnp.asarray(np.diag([1.0, 0.0, 0.0]))
    grad = jax.grad(qep_jax.von_neumann_entropy)(rho)
    # Convention: empty levels contribute no derivative; the occupied one gives -(ln 1 + 1).
    np.testing.assert_allclose(grad, np.diag([-1.0, 0.0, 0.0]), atol=1e-14)


@pytest.mark.parametrize("keep", [(0,), (1,), (2,), (0, 2), (1, 2), (0, 1, 2)])
def test_partial_trace_matches_reference(keep):
    rng = np.random.default_rng(8)
    dims = (2, 3, 2)
    rho = random_density_matrix(rng, 12)
    np.testing.assert_allclose(qep_jax.partial_trace(rho, dims, keep), reduced(rho, dims, keep), atol=1e-14)


def test_partial_trace_batched_and_errors():
    rng = np.random.default_rng(9)
    rhos = np.stack([random_density_matrix(rng, 6) for _ in range(3)])
    out = qep_jax.partial_trace(rhos, (2, 3), 1)
    np.testing.assert_allclose(out[2], reduced(rhos[2], (2, 3), (1,)), atol=1e-14)
    with pytest.raises(ValueError, match="keep"):
        qep_jax.partial_trace(rhos, (2, 3), 2)
    with pytest.raises(ValueError, match="shape"):
        qep_jax.partial_trace(rhos, (2, 2), 0)


class TestAgainstQuTiP:
    # Skipped test by test without QuTiP (an importorskip in the class body skipped the whole module).
    @property
    def qutip(self):
        return pytest.importorskip("qutip")

    def _qobj(self, rho, dims):
        return self.qutip.Qobj(rho, dims=[list(dims), list(dims)])

    def test_ptrace(self):
        rng = np.random.default_rng(10)
        dims = (2, 3, 2)
        rho = random_density_matrix(rng, 12)
        for keep in [(0,), (1,), (0, 2)]:
            expected = self._qobj(rho, dims).ptrace(list(keep)).full()
            np.testing.assert_allclose(qep_jax.partial_trace(rho, dims, keep), expected, atol=1e-14)

    def test_entropy_vn_and_relative(self):
        rng = np.random.default_rng(11)
        a = random_density_matrix(rng, 4)
        b = random_density_matrix(rng, 4)
        q = self.qutip
        assert abs(float(qep_jax.von_neumann_entropy(a)) - q.entropy_vn(q.Qobj(a))) < 1e-12
        assert abs(float(qep_jax.relative_entropy(a, b)) - q.entropy_relative(q.Qobj(a), q.Qobj(b))) < 1e-10

    def test_entropy_mutual_matches_trajectory(self):
        q = self.qutip
        rng = np.random.default_rng(12)
        h_s = random_hermitian(rng, 2, real=True)
        h_r = np.diag(np.linspace(-0.5, 0.5, 4))
        coupling = random_hermitian(rng, 8, scale=0.5)
        rho_s0 = random_density_matrix(rng, 2)
        system = qep_jax.OpenSystem(h_s, h_r, 2.0, coupling, rho_s0)
        t = 1.7
        traj = qep_jax.evolve(system, np.array([t]))
        h = np.kron(h_s, np.eye(4)) + np.kron(np.eye(2), h_r) + coupling
        rho_r = scipy.linalg.expm(-2.0 * h_r)
        rho0 = np.kron(rho_s0, rho_r / np.trace(rho_r))
        u = scipy.linalg.expm(-1j * h * t)
        rho = q.Qobj(u @ rho0 @ u.conj().T, dims=[[2, 4], [2, 4]])
        assert abs(float(traj.mutual_information[0]) - q.entropy_mutual(rho, 0, 1)) < 1e-10
        assert abs(float(traj.reservoir_entropy[0, 0]) - q.entropy_vn(rho.ptrace(1))) < 1e-10


def test_nan_input_gives_nan_not_a_finite_entropy():
    # x > 0 counted a NaN eigenvalue as an empty level: S = 0, D[I/2 || NaN] = -ln 2 (negative).
    nan_matrix = jnp.array([[0.5, jnp.nan], [jnp.nan, 0.5]])
    assert np.isnan(qep_jax.von_neumann_entropy(nan_matrix))
    assert np.isnan(qep_jax.von_neumann_entropy(jnp.diag(jnp.array([jnp.nan, 1.0]))))
    assert np.isnan(qep_jax.relative_entropy(jnp.eye(2) / 2, nan_matrix))
    assert np.isnan(qep_jax.relative_entropy(nan_matrix, jnp.eye(2) / 2))
    # Batched: only the NaN member is NaN.
    batch = jnp.stack([jnp.eye(2) / 2, nan_matrix])
    values = qep_jax.von_neumann_entropy(batch)
    assert np.isclose(values[0], np.log(2)) and np.isnan(values[1])


def test_logm_of_a_matrix_negative_beyond_rounding_is_nan():
    # The floor at the smallest normal number turned logm(-I) into a finite -708 I.
    assert np.all(np.isnan(qep_jax.logm_hermitian(-jnp.eye(2))))
    assert np.all(np.isnan(qep_jax.logm_hermitian(jnp.diag(jnp.array([1.0, -1e-3])))))
    # Singular and rounding-negative inputs keep the documented finite floor.
    for tiny in (0.0, -1e-17):
        out = qep_jax.logm_hermitian(jnp.diag(jnp.array([1.0, tiny])))
        assert np.all(np.isfinite(out)) and out[1, 1] < -700


def test_entropy_and_trace_arguments_are_checked():
    with pytest.raises(qep_jax.InputError, match="rho has shape"):
        qep_jax.von_neumann_entropy(jnp.ones(3))
    with pytest.raises(qep_jax.InputError, match="sigma has shape"):
        qep_jax.relative_entropy(jnp.eye(2) / 2, jnp.ones((2, 3)))
    with pytest.raises(qep_jax.InputError, match="same space"):
        qep_jax.relative_entropy(jnp.eye(2) / 2, jnp.eye(3) / 3)
    with pytest.raises(qep_jax.InputError, match="a has shape"):
        qep_jax.logm_hermitian(jnp.ones((2, 3)))
    # Nested lists and NumPy integers are accepted.
    assert np.isclose(qep_jax.von_neumann_entropy([[0.5, 0.0], [0.0, 0.5]]), np.log(2))
    rho = np.kron(np.diag([1.0, 0.0]), np.eye(2) / 2)
    np.testing.assert_allclose(qep_jax.partial_trace(rho.tolist(), (2, 2), np.int64(0)), np.diag([1.0, 0.0]))
    # int(2.5) == 2 traced a 4 x 4 state as (2, 2); keep=True meant subsystem 1.
    with pytest.raises(qep_jax.InputError, match="dims"):
        qep_jax.partial_trace(rho, (2.5, 2), 0)
    with pytest.raises(qep_jax.InputError, match="keep"):
        qep_jax.partial_trace(rho, (2, 2), True)
    for bad in (1.0, np.array([0.5])):  # a float raised "not iterable"
        with pytest.raises(qep_jax.InputError, match="keep"):
            qep_jax.partial_trace(rho, (2, 2), bad)
    np.testing.assert_allclose(qep_jax.partial_trace(rho, (2, 2), np.array([0])), np.diag([1.0, 0.0]))


def test_goe_arguments_are_checked():
    key = jax.random.key(0)
    # A complex dtype drew complex entries: (A + A^T)/sqrt(2) was not Hermitian.
    with pytest.raises(qep_jax.InputError, match="dtype"):
        qep_jax.goe(key, 3, dtype=jnp.complex128)
    with pytest.raises(qep_jax.InputError, match="shape"):
        qep_jax.goe(key, 3, shape=5)
    with pytest.raises(qep_jax.InputError, match="shape"):
        qep_jax.goe(key, 3, shape=(-1,))
    assert qep_jax.goe(key, 3, shape=(np.int64(2),)).shape == (2, 3, 3)


def test_public_kernels_run_compiled_once_per_shape():
    """They ran op by op (jax.grad of an 8 x 8 entropy: 15 ms against 0.04 ms compiled)."""
    from qep_jax import _entropy

    rng = np.random.default_rng(5)
    states = [random_density_matrix(rng, 3, pure=False, real=True) for _ in range(3)]
    before = [f._cache_size() for f in (_entropy._jit_entropy, _entropy._jit_logm, _entropy._jit_relative_entropy)]
    for rho in states:
        assert abs(float(qep_jax.von_neumann_entropy(rho)) - entropy(rho)) < 1e-12
        qep_jax.logm_hermitian(rho)
        assert abs(float(qep_jax.relative_entropy(rho, states[0])) - relative_entropy(rho, states[0])) < 1e-10
    after = [f._cache_size() for f in (_entropy._jit_entropy, _entropy._jit_logm, _entropy._jit_relative_entropy)]
    assert all(b - a <= 1 for a, b in zip(before, after)), (before, after)


@pytest.mark.parametrize("scale", [1e-300, 1e-17, 1e-14, 1e-6, 3.0, 1e155, 1e200])
def test_qubit_entropy_of_scaled_and_non_hermitian_input(scale):
    """The 2 x 2 closed form read rho[0, 1] only (a non-Hermitian input's value ignored rho[1, 0],
    its derivative did not), lost precision away from unit trace (1.7e-4 at 1e-14) and gave inf
    (log1p(-1)) for tiny and NaN (a d overflow) for huge entries; the eigenvalue formula gives them."""
    rho = scale * np.array([[0.7, 0.2], [0.2, 0.3]])
    lam = np.linalg.eigvalsh(rho)
    expected = -np.sum(lam * np.log(lam))
    assert abs(float(qep_jax.von_neumann_entropy(rho)) - expected) < 1e-13 * abs(expected)
    skew = np.array([[0.5, 0.4], [0.0, 0.5]])
    assert abs(float(qep_jax.von_neumann_entropy(skew)) - entropy((skew + skew.T) / 2)) < 1e-14
