"""Input checks found missing by fuzzing the public API: each bad input raises InputError naming the
argument, each valid form (lists, NumPy, JAX, ints for floats, 0-d arrays) keeps working, and
static facts (shape, dtype) are checked under jit as well."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qep_jax
from qep_jax import InputError

H_S = np.diag([-0.5, 0.5])
H_R = np.diag([-0.5, 0.0, 0.5])
V = 0.1 * np.kron(np.array([[0.0, 1.0], [1.0, 0.0]]), np.ones((3, 3)))
RHO = np.diag([1.0, 0.0])
PURE_BOOL = np.array([[True, False], [False, False]])


def make(**overrides):
    args = dict(h_system=H_S, h_reservoirs=H_R, betas=2.0, coupling=V, rho_system=RHO)
    args.update(overrides)
    return qep_jax.OpenSystem(**args)


# -- bool and integer matrices (A1, B3) --------------------------------------------------------


@pytest.mark.parametrize("call, name", [
    (lambda: qep_jax.von_neumann_entropy(PURE_BOOL), "rho"),  # bool + is OR: it gave ln(2)/2, not 0
    (lambda: qep_jax.relative_entropy(PURE_BOOL, np.eye(2) / 2), "rho"),
    (lambda: qep_jax.relative_entropy(RHO, PURE_BOOL), "sigma"),
    (lambda: qep_jax.logm_hermitian(np.eye(2, dtype=bool)), "a"),
    (lambda: qep_jax.partial_trace(np.eye(4, dtype=bool), (2, 2), 0), "rho"),  # returned a bool matrix
    (lambda: qep_jax.diagonalize(np.eye(2, dtype=bool)), "h"),
    (lambda: make(h_system=np.array([[False, True], [True, False]])), "h_system"),  # NumPy "boolean subtract"
    (lambda: make(rho_system=PURE_BOOL), "rho_system"),
    (lambda: make(betas=True), "betas"),
    (lambda: qep_jax.SpinGORM(4, 0.1, 0.1, 1.0).open_system(np.eye(4, dtype=bool)), "x"),
    (lambda: jax.jit(qep_jax.von_neumann_entropy)(PURE_BOOL), "rho"),  # a traced dtype is static
])
def test_bool_matrices_are_refused(call, name):
    with pytest.raises(InputError, match=f"^{name} has dtype bool; give numbers"):
        call()


def test_integer_matrices_are_promoted_to_float():
    # int8: a + a^T wrapped around (100 + 100 = -56) before the float conversion.
    np.testing.assert_allclose(qep_jax.logm_hermitian(np.diag([100, 1]).astype(np.int8)),
                               np.diag([np.log(100.0), 0.0]), atol=1e-12)
    np.testing.assert_allclose(qep_jax.von_neumann_entropy(np.diag([1, 0]).astype(np.int8)), 0.0, atol=1e-15)
    np.testing.assert_allclose(qep_jax.relative_entropy(np.diag([1, 0]), np.eye(2) / 2), np.log(2.0), rtol=1e-12)
    reduced = qep_jax.partial_trace(np.eye(4, dtype=np.int8), (2, 2), 0)
    assert reduced.dtype == jnp.result_type(float)
    np.testing.assert_array_equal(reduced, 2 * np.eye(2))
    spectrum = qep_jax.diagonalize(np.array([[2, 1], [1, 2]], dtype=np.int8))
    np.testing.assert_allclose(spectrum.energies, [1.0, 3.0], rtol=1e-12)
    assert make(h_system=np.array([[0, 1], [1, 0]], dtype=np.int8), rho_system=np.diag([1, 0])).h_system.dtype == \
        jnp.result_type(float)


@pytest.mark.parametrize("name, bad", [("h_system", "abc"), ("h_system", None), ("coupling", "x"),
                                       ("rho_system", "x"), ("betas", "2"), ("betas", None)])
def test_strings_and_none_are_refused(name, bad):
    with pytest.raises(InputError, match=f"^{name}=.* must be a number or an array of numbers"):
        make(**{name: bad})


# -- OpenSystem: sizes, tracers, tolerance (B1, B2, A8, C5) -------------------------------------


@pytest.mark.parametrize("overrides, name", [
    (dict(h_reservoirs=np.zeros((0, 0)), coupling=np.zeros((0, 0))), r"h_reservoirs\[0\]"),
    (dict(h_system=np.zeros((0, 0)), rho_system=np.zeros((0, 0)), coupling=np.zeros((0, 0))), "h_system"),
])
def test_empty_matrices_are_refused(overrides, name):
    # Accepted before; evolve then failed with "argmax of an empty sequence".
    with pytest.raises(InputError, match=f"{name} has shape \\(0, 0\\); a matrix needs at least one row"):
        make(**overrides)


@pytest.mark.parametrize("field, value, pattern", [
    ("coupling", np.zeros((4, 4)), r"coupling has shape \(4, 4\), expected \(6, 6\)"),
    ("betas", np.array([1.0, 2.0]), r"betas has shape \(2,\), expected a scalar or \(1,\)"),
    ("betas", np.asarray(2.0 + 5.0j), "betas has dtype complex128; it must be real"),  # imaginary part dropped
    ("h_system", np.ones((2, 3)), "h_system must be a square matrix"),
    ("rho_system", np.eye(3) / 3, r"rho_system has shape \(3, 3\), expected \(2, 2\)"),
    ("h_reservoirs", np.eye(4), r"coupling has shape \(6, 6\), expected \(8, 8\)"),
])
def test_static_checks_hold_for_traced_arguments(field, value, pattern):
    with pytest.raises(InputError, match=pattern):
        jax.jit(lambda x: make(**{field: x}).coupling)(value)


def test_traced_chemical_potentials_and_number_operators_are_checked():
    n_r = np.diag([0.0, 1.0, 2.0])
    with pytest.raises(InputError, match="chemical_potentials has dtype complex128; it must be real"):
        jax.jit(lambda mu: make(number_operators=[n_r], chemical_potentials=mu).betas)(np.asarray(0.1 + 1j))
    with pytest.raises(InputError, match=r"number_operators\[0\] has shape \(2, 2\), expected \(3, 3\)"):
        jax.jit(lambda n: make(number_operators=[n]).betas)(np.eye(2))
    # Valid traced arguments still build the same system.
    traced = jax.jit(lambda b, mu: make(betas=b, number_operators=[n_r], chemical_potentials=mu).betas)(2.0, 0.1)
    np.testing.assert_array_equal(traced, [2.0])


@pytest.mark.parametrize("overrides, name", [
    (dict(h_system=1e-11 * np.array([[0.0, 1.0], [0.0, 0.0]])), "h_system"),
    (dict(coupling=1e-11 * np.triu(np.ones((6, 6)), 1)), "coupling"),
])
def test_hermiticity_tolerance_is_relative(overrides, name):
    # The tolerance was 1.5e-10 max(1, max|A|): every matrix with entries below ~1e-10 passed.
    with pytest.raises(InputError, match=f"{name} is not Hermitian"):
        make(**overrides)
    make(h_system=1e-11 * H_S, coupling=1e-11 * V)  # small Hermitian matrices are fine
    make(h_system=H_S + 1e-14 * np.array([[0.0, 1.0], [0.0, 0.0]]))  # rounding-level asymmetry too


# -- diagonalize (B4, B10) ----------------------------------------------------------------------


@pytest.mark.parametrize("h, pattern", [
    (np.zeros((2, 3)), r"h must be a square matrix, got shape \(2, 3\)"),
    (np.ones(3), r"h must be a square matrix, got shape \(3,\)"),
    (np.triu(np.ones((3, 3))), "h is not Hermitian"),
    (np.diag([np.nan, 1.0]), "h contains NaN"),
    ("x", "h='x' must be a number"),
])
def test_diagonalize_checks_its_input(h, pattern):
    with pytest.raises(InputError, match=pattern):
        qep_jax.diagonalize(h)


def test_diagonalize_accepts_lists_and_checks_traced_shapes():
    spectrum = qep_jax.diagonalize([[2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(spectrum.energies, [1.0, 2.0])
    with pytest.raises(InputError, match="h must be a square matrix"):
        jax.jit(qep_jax.diagonalize)(np.zeros((2, 3)))
    np.testing.assert_allclose(jax.jit(qep_jax.diagonalize)(np.diag([3.0, 1.0])).energies, [1.0, 3.0])


# -- entropies and partial trace (A12, B9, C6, C7) ------------------------------------------------


def test_relative_entropy_derivative_is_nan_where_the_value_is_infinite():
    rho, sigma = jnp.eye(2) / 2, jnp.diag(jnp.array([1.0, 0.0]))
    assert float(qep_jax.relative_entropy(rho, sigma)) == np.inf
    # It was a finite [[-0.5, 0], [0, 0]]: an optimizer would have stepped on an infinite objective.
    assert np.all(np.isnan(jax.grad(lambda s: qep_jax.relative_entropy(rho, s))(sigma)))
    assert np.all(np.isnan(jax.grad(lambda r: qep_jax.relative_entropy(r, sigma))(rho)))
    _, tangent = jax.jvp(lambda s: qep_jax.relative_entropy(rho, s), (sigma,), (jnp.eye(2),))
    assert np.isnan(tangent)
    # Inside the support the derivative is unchanged and finite; in a batch only the infinite entry is NaN.
    finite = jax.grad(lambda s: qep_jax.relative_entropy(jnp.diag(jnp.array([1.0, 0.0])), s))(jnp.eye(2) / 2)
    np.testing.assert_allclose(finite, -np.diag([2.0, 0.0]), atol=1e-12)
    batch = jnp.stack([jnp.eye(2) / 2, sigma])
    grads = jax.grad(lambda s: jnp.sum(qep_jax.relative_entropy(jnp.eye(2) / 2, s)))(batch)
    assert np.all(np.isfinite(grads[0])) and np.all(np.isnan(grads[1]))


def test_relative_entropy_batches_must_broadcast():
    half = np.eye(2) / 2
    with pytest.raises(InputError, match=r"rho has batch shape \(3,\) and sigma \(2,\), which do not broadcast"):
        qep_jax.relative_entropy(np.stack([half] * 3), np.stack([half] * 2))
    np.testing.assert_allclose(qep_jax.relative_entropy(np.stack([half] * 3), half), 0.0, atol=1e-15)


@pytest.mark.parametrize("dims, pattern", [
    (6, r"dims=6 must be a sequence of subsystem dimensions, e.g. \(6,\)"),  # "'int' object is not iterable"
    (None, "dims=None must be a sequence"),
    ("23", "dims='23' must be a sequence"),
])
def test_partial_trace_dims_messages(dims, pattern):
    with pytest.raises(InputError, match=pattern):
        qep_jax.partial_trace(np.eye(6) / 6, dims, 0)
    np.testing.assert_allclose(qep_jax.partial_trace(np.eye(6) / 6, np.array([2, 3]), 0), np.eye(2) / 2)


# -- random matrices and keys (B8, C7) ------------------------------------------------------------


@pytest.mark.parametrize("bad, pattern", [
    (0, r"got the int 0, a seed; pass jax.random.key\(0\)"),
    (None, "got NoneType"),
    (0.5, "got float"),
    ("key", "got str"),
    (np.array([1, 2, 3], dtype=np.uint32), r"got a uint32 array of shape \(3,\)"),
])
def test_invalid_keys_are_refused(bad, pattern):
    model = qep_jax.SpinGORM(4, 0.1, 0.1, 1.0)
    two = qep_jax.SpinTwoGORM(3, 0.1, 0.1, 1.0, 2.0)
    for call in (lambda: qep_jax.goe(bad, 3), lambda: model.simulate(bad, [0.0], 1),
                 lambda: two.simulate(bad, [0.0], 1), lambda: two.draw(bad)):
        with pytest.raises(InputError, match=f"^key must be one jax.random key, e.g. jax.random.key\\(seed\\); {pattern}"):
            call()


def test_a_batch_of_keys_is_refused_and_legacy_keys_work(key):
    model = qep_jax.SpinGORM(4, 0.1, 0.1, 1.0)
    with pytest.raises(InputError, match=r"a batch of keys of shape \(2,\); pass one \(map over several with jax.vmap\)"):
        model.simulate(jax.random.split(key, 2), [0.0], 1)
    with pytest.raises(InputError, match=r"a batch of legacy keys of shape \(2, 2\)"):
        qep_jax.goe(jax.random.split(jax.random.PRNGKey(0), 2), 3)
    legacy = model.simulate(jax.random.PRNGKey(0), [0.0, 1.0], 2).entropy_production
    typed = model.simulate(jax.random.key(0), [0.0, 1.0], 2).entropy_production
    np.testing.assert_array_equal(legacy, typed)
    assert jax.vmap(lambda k: qep_jax.goe(k, 3))(jax.random.split(key, 2)).shape == (2, 3, 3)


def test_goe_dtype_checks(key):
    with pytest.raises(InputError, match="GOE matrices have dtype float16, which qep_jax does not support"):
        qep_jax.goe(key, 3, dtype=np.float16)
    with pytest.raises(InputError, match="dtype='floaty' is not a dtype"):
        qep_jax.goe(key, 3, dtype="floaty")
    with jax.enable_x64(False):
        # jax.random.normal silently returned float32.
        with pytest.raises(InputError, match=r"dtype=float64 needs jax.config.update\('jax_enable_x64', True\)"):
            qep_jax.goe(jax.random.key(0), 3, dtype=jnp.float64)
        assert qep_jax.goe(jax.random.key(0), 3, dtype="float32").dtype == jnp.float32
    assert qep_jax.goe(key, 3, dtype=jnp.float32).dtype == jnp.float32


# -- models (A2, A7, B2, B13, C3, C7) -------------------------------------------------------------


def test_realization_indices_beyond_fold_in_range_are_refused(key):
    model = qep_jax.SpinGORM(4, 0.1, 0.1, 1.0)
    # fold_in keeps the low 32 bits: first_realization=2**32 silently repeated realizations 0, 1, ...
    with pytest.raises(InputError, match=r"first_realization \+ n_realizations = 4294967298 must be <= 4294967296"):
        model.simulate(key, [0.0, 1.0], 2, first_realization=2**32)
    with pytest.raises(InputError, match="must be <= 4294967296"):
        model.simulate(key, [0.0], 1, first_realization=2**63)  # was an OverflowError
    last = model.simulate(key, [0.0, 1.0], 1, first_realization=2**32 - 1).entropy_production
    assert np.all(np.isfinite(last))
    with jax.enable_x64(False):
        with pytest.raises(InputError, match=r"must be <= 2147483648 = 2\*\*31 without jax_enable_x64"):
            model.simulate(jax.random.key(0), [0.0, 1.0], 2, first_realization=2**31 - 1)


@pytest.mark.parametrize("budget", [0, -1, "1GB", None, 1.5e9, True])
def test_memory_budget_must_be_a_positive_int(key, budget):
    # A string failed in a comparison; 0 claimed the realization needs "0.00 GiB".
    with pytest.raises(InputError, match="^memory_budget=.* must be a positive int"):
        qep_jax.SpinGORM(4, 0.1, 0.1, 1.0).simulate(key, [0.0], 1, memory_budget=budget)


def test_model_flags_must_be_bools(key):
    # "no" is truthy: the reservoir entropies were computed.
    with pytest.raises(InputError, match="reservoir_entropies='no' must be True or False"):
        qep_jax.SpinGORM(4, 0.1, 0.1, 1.0).simulate(key, [0.0], 1, reservoir_entropies="no")
    with pytest.raises(InputError, match="reservoir_entropies=1 must be True or False"):
        qep_jax.SpinTwoGORM(3, 0.1, 0.1, 1.0, 2.0).simulate(key, [0.0], 1, reservoir_entropies=1)
    out = qep_jax.SpinGORM(4, 0.1, 0.1, 1.0).simulate(key, [0.0], 1, reservoir_entropies=np.bool_(False))
    assert out.reservoir_entropy is None


@pytest.mark.parametrize("build", [
    lambda: qep_jax.SpinGORM(4, 0.1, 0.1, 1e39),
    lambda: qep_jax.SpinTwoGORM(4, 0.1, 0.1, 1e39, 1.0),
    lambda: qep_jax.PiecewiseConstant([1e39], [[1.0]]),
    lambda: qep_jax.PiecewiseConstant([1.0], [[1e39]]),
    lambda: qep_jax.FourierRamp(1e39, [0.0], [1.0], [[0.0]]),
    lambda: qep_jax.FourierRamp(1.0, [0.0], [1e39], [[0.0]]),
    lambda: qep_jax.redfield_state([1e39], 0.1, 0.1, 1.0, RHO),
])
def test_values_that_overflow_float32_are_refused(build):
    """Finite as given, inf in float32 (x64 off): every result was inf or NaN."""
    with jax.enable_x64(False):
        with pytest.raises(InputError, match="overflows float32"):
            build()


def test_times_that_coincide_in_float32_are_refused():
    """1e7 + 0.1 k gave 2 distinct float32 times of 10 and a step function of D_iS, silently."""
    model = qep_jax.SpinGORM(4, 0.1, 0.1, 1.0)
    times = 1e7 + 0.1 * np.arange(10)
    with jax.enable_x64(False):
        system = model.open_system(np.eye(4, dtype=np.float32))
        with pytest.raises(InputError, match=r"times 10000000.0 and 10000000.1 are the same number in float32"):
            qep_jax.evolve(system, times)
        with pytest.raises(InputError, match="same number in float32"):
            qep_jax.redfield_prediction(model, times)
        qep_jax.evolve(system, [0.0, 1.0, 1.0])  # repeated on purpose: not a cast's doing
        with pytest.raises(InputError, match=r"times 0.0 and 1e-46 are the same number in float32"):
            qep_jax.evolve(system, [1e-46, 0.0, 1.0])  # unsorted too
    assert qep_jax.evolve(model.open_system(np.eye(4)), times).times.shape == (10,)  # float64: distinct


def test_models_check_traced_matrix_shapes_and_half_precision():
    model = qep_jax.SpinGORM(4, 0.1, 0.1, 1.0)
    # Under jit the shape check was skipped: dims (2, 4) with a (6, 6) coupling.
    with pytest.raises(InputError, match=r"x has shape \(3, 3\), expected \(4, 4\) = \(n_levels, n_levels\)"):
        jax.jit(model.open_system)(np.eye(3))
    two = qep_jax.SpinTwoGORM(3, 0.1, 0.1, 1.0, 2.0)
    with pytest.raises(InputError, match=r"x_cold has shape \(4, 4\), expected \(3, 3\)"):
        jax.jit(two.open_system)(np.eye(3), np.eye(4))
    assert jax.jit(model.open_system)(np.eye(4)).coupling.shape == (8, 8)
    # SpinGORM refused float16; SpinTwoGORM ran on with the parameters rounded to float16.
    with pytest.raises(InputError, match="dtype float16, which qep_jax does not support"):
        qep_jax.SpinTwoGORM(3, np.float16(0.1), np.float16(0.1), np.float16(1.0), np.float16(2.0))
    with pytest.raises(InputError, match="delta must be a real scalar, got a traced value of shape \\(2,\\)"):
        jax.jit(lambda d: qep_jax.SpinGORM(4, d, 0.1, 1.0).delta)(jnp.array([0.1, 0.2]))


# -- protocols (B2, C2, C3) ------------------------------------------------------------------------


@pytest.mark.parametrize("build, pattern", [
    (lambda: qep_jax.PiecewiseConstant([True], [[0.0]]), "durations has dtype bool"),
    (lambda: qep_jax.PiecewiseConstant(None, [[0.0]]), "durations=None must be a number"),
    (lambda: qep_jax.PiecewiseConstant([1.0], "x"), "values='x' must be a number"),
    (lambda: qep_jax.FourierRamp(True, [0.0], [1.0], [[0.0]]), "duration has dtype bool"),
    # Traced fields: the shape check was skipped and n_controls raised IndexError.
    (lambda: jax.jit(lambda v: qep_jax.PiecewiseConstant(jnp.ones(2), v).n_controls)(jnp.ones(2)),
     r"values must have 2 dimension\(s\), got shape \(2,\)"),
    (lambda: jax.jit(lambda v: qep_jax.PiecewiseConstant(jnp.ones(2), v).n_controls)(jnp.ones((2, 1)) * 1j),
     "values must be real"),
    (lambda: jax.jit(lambda d: qep_jax.FourierRamp(d, jnp.zeros(1), jnp.ones(1), jnp.zeros((1, 1))).n_controls)(
        jnp.ones(2)), r"duration must have 0 dimension\(s\), got shape \(2,\)"),
])
def test_protocol_field_checks(build, pattern):
    with pytest.raises(InputError, match=pattern):
        build()


# -- master-equation predictions (A3, A4, A5, A6, B4, B6, B9, C6) ----------------------------------

E4 = np.linspace(-0.5, 0.5, 4)
R4 = np.eye(4) / np.sqrt(32.0)


@pytest.mark.parametrize("call, pattern", [
    # Silent wrong answers: NaN frequencies gave a(w) = 0, delta = NaN zero rates, delta = 2 zero
    # rates outside the documented range, a complex lambda negative rates, beta = inf NaN.
    (lambda: qep_jax.reservoir_spectrum([np.nan], 10.0), "frequencies contains NaN"),
    (lambda: qep_jax.reservoir_spectrum([0.1, 1.0], np.inf), "beta contains NaN or infinite"),
    (lambda: qep_jax.reservoir_spectrum([0.1], np.array([1.0, 2.0])), "beta=.* must be a real scalar"),
    (lambda: qep_jax.reservoir_spectrum([0.1 + 0j], 1.0), "frequencies has dtype complex128; it must be real"),
    (lambda: qep_jax.reservoir_spectrum(0.1, 1.0, prefactor="1/8"), "prefactor='1/8' must be a real scalar"),
    (lambda: qep_jax.reservoir_spectrum(0.1, 1.0, prefactor=np.inf), "prefactor contains NaN"),
    (lambda: qep_jax.redfield_rates(np.nan, 0.1, 10.0), "delta contains NaN"),
    (lambda: qep_jax.redfield_rates(2.0, 0.1, 10.0), r"delta=2.0 must lie in \(0, 1\]"),
    (lambda: qep_jax.redfield_rates(0.0, 0.1, 10.0), r"delta=0.0 must lie in \(0, 1\]"),
    (lambda: qep_jax.redfield_rates(0.1, 0.1j, 10.0), "coupling_strength=0.1j must be a real scalar"),
    (lambda: qep_jax.redfield_rates(0.1, [0.1, 0.2], 10.0), r"coupling_strength=\[0.1, 0.2\] must be a real scalar"),
    (lambda: qep_jax.redfield_rates(0.1, 0.1, np.nan), "beta contains NaN"),
    (lambda: qep_jax.redfield_state([0.0], np.nan, 0.1, 10.0, RHO), "delta contains NaN"),
    (lambda: qep_jax.reservoir_spectrum_lines(1.0, np.eye(2), 1.0), r"energies has shape \(\), expected \(N,\)"),
    (lambda: qep_jax.reservoir_spectrum_lines(E4, np.eye(3), 1.0),
     r"coupling_matrix has shape \(3, 3\), expected \(4, 4\) = \(N, N\)"),
    (lambda: qep_jax.reservoir_spectrum_lines(E4, np.triu(np.ones((4, 4))), 1.0), "coupling_matrix is not Hermitian"),
    (lambda: qep_jax.reservoir_spectrum_lines(E4, R4, np.nan), "beta contains NaN"),
    (lambda: qep_jax.reservoir_spectrum_sampled([0.1], E4, R4, 1.0, width=np.array([0.1, 0.2])),
     r"width=array\(\[0.1, 0.2\]\) must be a real scalar"),
    (lambda: qep_jax.reservoir_spectrum_sampled([0.1], E4, R4, 1.0, width=np.inf), "width contains NaN"),
    (lambda: qep_jax.reservoir_spectrum_sampled(np.ones((2, 3)), E4, R4, 1.0, width=0.1),
     r"frequencies has shape \(2, 3\), expected \(F,\)"),
])
def test_master_equation_arguments_are_checked(call, pattern):
    with pytest.raises(InputError, match=pattern):
        call()


def test_master_equation_accepts_lists_ints_and_traced_parameters():
    np.testing.assert_allclose(qep_jax.reservoir_spectrum([0.1, -0.1], 10.0),
                               qep_jax.reservoir_spectrum(jnp.array([0.1, -0.1]), 10.0))
    np.testing.assert_allclose(qep_jax.reservoir_spectrum(0, 10), 1 / 8)
    freq, weight = qep_jax.reservoir_spectrum_lines([0.0, 1.0], [[0.0, 1.0], [1.0, 0.0]], 1.0)
    np.testing.assert_allclose(weight, [[0.0, 1 / (1 + np.exp(-1.0))], [1 / (1 + np.e), 0.0]], rtol=1e-12)
    rates = jax.vmap(lambda d: qep_jax.redfield_rates(d, 0.1, 10.0).relaxation)(jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(rates[0], qep_jax.redfield_rates(0.1, 0.1, 10.0).relaxation, rtol=1e-14)
    # The shape checks hold under jit (they skipped tracers: a broadcasting error inside).
    with pytest.raises(InputError, match=r"coupling_matrix has shape \(3, 3\), expected \(4, 4\)"):
        jax.jit(qep_jax.reservoir_spectrum_lines)(E4, np.eye(3), 1.0)
    with pytest.raises(InputError, match="delta must be a real scalar, got a traced value of shape"):
        jax.jit(lambda d: qep_jax.redfield_rates(d, 0.1, 10.0))(jnp.array([0.1, 0.2]))


def test_predictions_refuse_negative_times():
    model = qep_jax.SpinGORM(101, 0.1, 0.3, 10.0)
    # Populations of -2.6e41 (Redfield), -inf (shell) and -1.2e4 (redfield_state) came out.
    for call in (lambda: qep_jax.redfield_prediction(model, [0.0, -1000.0]),
                 lambda: qep_jax.shell_prediction(model, [-1e5]),
                 lambda: qep_jax.redfield_state([-1000.0], 0.1, 0.1, 10.0, RHO)):
        with pytest.raises(InputError, match=r"times must be >= 0 \(got -1000(00)?\); the master-equation predictions"):
            call()


def test_redfield_state_checks_the_shape_of_a_traced_state():
    # Under jit a 3 x 3 state was read as its top-left 2 x 2 corner.
    f = jax.jit(lambda r: qep_jax.redfield_state(jnp.array([0.0]), 0.1, 0.1, 10.0, r))
    with pytest.raises(InputError, match=r"rho_system0 has shape \(3, 3\), expected \(2, 2\)"):
        f(np.eye(3) / 3)
    np.testing.assert_allclose(f(np.diag([1.0, 0.0]))[0], np.diag([1.0, 0.0]), atol=1e-15)
    np.testing.assert_allclose(qep_jax.redfield_state([0.0], 0.1, 0.1, 10.0, [[1, 0], [0, 0]])[0], RHO, atol=1e-15)


def test_open_entropy_production_checks_and_batches():
    hs = np.diag([-0.05, 0.05])
    half = np.eye(2) / 2
    for args, pattern in (
            ((RHO, np.eye(3), 10.0, RHO), r"h_system has shape \(3, 3\), expected \(2, 2\)"),
            ((RHO, np.triu(np.ones((2, 2))), 10.0, half), "h_system is not Hermitian"),
            ((2 * RHO, hs, 10.0, RHO), "system_states has trace 2"),  # it gave -0.886
            ((np.stack([RHO, 2 * RHO]), hs, 10.0, RHO), r"system_states\[1\] has trace 2"),
            ((RHO, hs, 10.0, np.eye(3) / 3), r"initial_state has shape \(3, 3\), expected \(..., 2, 2\)"),
            ((RHO, hs, np.nan, RHO), "beta contains NaN"),
            ((np.stack([RHO] * 3), hs, np.array([1.0, 2.0]), RHO), "beta=.* must be a real scalar"),
            ((np.stack([RHO] * 3), hs, 10.0, np.stack([RHO] * 2)), r"batch shape \(3,\) and initial_state \(2,\)")):
        with pytest.raises(InputError, match=pattern):
            qep_jax.open_entropy_production(*args)
    # Lists work (einsum refused them); a batch of initial states is one per state (jnp.trace
    # summed over the batch axes: [0, 0.5] instead of [0, 0]).
    np.testing.assert_allclose(qep_jax.open_entropy_production(RHO.tolist(), hs.tolist(), 10.0, RHO.tolist()), 0.0)
    np.testing.assert_allclose(qep_jax.open_entropy_production(RHO, hs, 10.0, np.stack([RHO, RHO])), [0.0, 0.0],
                               atol=1e-15)
    pair = qep_jax.open_entropy_production(np.stack([RHO, half]), hs, 10.0, np.stack([half, RHO]))
    np.testing.assert_allclose(pair, [-qep_jax.open_entropy_production(half, hs, 10.0, RHO),
                                      qep_jax.open_entropy_production(half, hs, 10.0, RHO)], rtol=1e-12)


# -- drive and landauer_bounds (A10, A11, B7, B11, C1, C3) ------------------------------------------

SZ = np.diag([-0.5, 0.5])


@pytest.fixture(scope="module")
def spin_system():
    return qep_jax.SpinGORM(4, 0.1, 0.3, 2.0).open_system(np.asarray(qep_jax.goe(jax.random.key(0), 4)))


class _Plain:
    duration = 1.0
    n_controls = 1

    def values(self, t):
        return jnp.array([t])

    def rates(self, t):
        return jnp.array([1.0])


def _plain(**attributes):
    return type("Custom", (_Plain,), attributes)()


@pytest.mark.parametrize("protocol, pattern", [
    # Ran the time grid backwards (times 0, -0.25, ...) or produced NaN.
    (_plain(duration=-1.0), r"Custom.duration=-1.0 must be finite and > 0"),
    (_plain(duration=np.nan), r"Custom.duration=nan must be finite and > 0"),
    (_plain(duration=np.array([1.0, 2.0])), r"Custom.duration has shape \(2,\); it must be a scalar"),
    # values(t) longer than n_controls failed in the kernel's tensordot.
    (_plain(values=lambda self, t: jnp.array([t, t])), r"Custom.values\(t\) has shape \(2,\), but Custom.n_controls = 1"),
    (_plain(n_controls=2, values=lambda self, t: jnp.array([t, t])),
     r"Custom.rates\(t\) has shape \(1,\), but Custom.n_controls = 2"),
    (_plain(n_controls=1.0), r"protocol.n_controls=1.0 must be an int"),
])
def test_drive_checks_a_plain_smooth_protocol(spin_system, protocol, pattern):
    with pytest.raises(InputError, match=pattern):
        qep_jax.drive(spin_system, protocol, system_drives=[SZ], n_steps=4)


def test_drive_reads_one_operator_given_as_nested_lists(spin_system):
    ramp = qep_jax.PiecewiseConstant(jnp.full(3, 0.5), jnp.linspace(0.0, 1.0, 3)[:, None])
    # [[-0.5, 0], [0, 0.5]] was read as two operators of shape (2,).
    nested = qep_jax.drive(spin_system, ramp, system_drives=SZ.tolist())
    single = qep_jax.drive(spin_system, ramp, system_drives=[SZ])
    np.testing.assert_allclose(nested.work, single.work, atol=1e-15)
    for drives, pattern in (([np.eye(2, dtype=bool)], r"system_drives\[0\] has dtype bool"),
                            (["x"], r"system_drives\[0\]='x' must be a number"),
                            ("x", "system_drives must be one matrix or a sequence of matrices")):
        with pytest.raises(InputError, match=pattern):
            qep_jax.drive(spin_system, ramp, system_drives=drives)
    with pytest.raises(InputError, match="checkpoint='yes' must be True or False"):
        qep_jax.drive(spin_system, ramp, system_drives=[SZ], checkpoint="yes")


@pytest.mark.parametrize("args, pattern", [
    # A matrix H_r was flattened: its zeros counted as levels.
    ((0.1, np.diag(np.linspace(-0.5, 0.5, 20)), 10.0), r"reservoir_energies has shape \(20, 20\); give the \(d,\)"),
    ((0.1, np.linspace(-0.5, 0.5, 20) + 0j, 10.0), "reservoir_energies has dtype complex128; it must be real"),
    # SciPy's errors: "function value is NaN", "failed to converge", a TypeError.
    ((np.nan, np.linspace(-0.5, 0.5, 20), 10.0), "entropy_decrease contains NaN"),
    ((0.1 + 1j, np.linspace(-0.5, 0.5, 20), 10.0), "entropy_decrease has dtype complex128; it must be real"),
    (("0.1", np.linspace(-0.5, 0.5, 20), 10.0), "entropy_decrease='0.1' must be a number"),
    ((0.1, np.linspace(-0.5, 0.5, 20), np.inf), "beta contains NaN or infinite"),
    ((0.1, np.linspace(-0.5, 0.5, 20), np.array([1.0, 2.0])), r"beta=array\(\[1., 2.\]\) must be a real scalar"),
    ((0.1, np.linspace(-0.5, 0.5, 20), "x"), "beta='x' must be a real scalar"),
    ((0.1, np.linspace(-0.5, 0.5, 20), 1 + 1j), r"beta=\(1\+1j\) must be a real scalar"),
])
def test_landauer_bounds_checks_its_arguments(args, pattern):
    with pytest.raises(InputError, match=pattern):
        qep_jax.landauer_bounds(*args)


def test_landauer_bounds_at_a_huge_beta():
    """beta = 1e300 is zero temperature to double precision: the bounds equal those at beta = 1e4
    (brentq over [0, 1e300] failed to converge)."""
    energies = np.linspace(-0.5, 0.5, 20)
    huge, large = qep_jax.landauer_bounds(0.1, energies, 1e300), qep_jax.landauer_bounds(0.1, energies, 1e4)
    np.testing.assert_allclose(huge.spectral, large.spectral, rtol=1e-10)
    with pytest.raises(InputError, match="entropy_decrease is traced"):
        jax.jit(lambda x: qep_jax.landauer_bounds(x, energies, 10.0).landauer)(0.1)


def test_lists_holding_tracers_are_stacked():
    """A list of traced entries (jax.grad over one matrix entry, jit over two betas) was refused as
    'not a rectangular array'; it is stacked as jnp.asarray would."""
    h_r, coupling = np.diag([-0.5, 0.5]), 0.1 * np.kron([[0.0, 1.0], [1.0, 0.0]], [[0.3, 1.0], [1.0, -0.7]])
    times = np.array([0.0, 1.0, 3.0])

    def heat(g):
        system = qep_jax.OpenSystem([[-1.0, g], [g, 1.0]], h_r, 2.0, coupling, np.diag([1.0, 0.0]))
        return qep_jax.evolve(system, times, reservoir_entropies=False).heat[-1, 0]

    h = 1e-6
    np.testing.assert_allclose(jax.grad(heat)(0.2), (heat(0.2 + h) - heat(0.2 - h)) / (2 * h), rtol=1e-6)
    two = qep_jax.OpenSystem(np.diag([-0.1, 0.1]), [h_r, h_r], [1.0, 2.0], 0.1 * np.ones((8, 8)), np.diag([1.0, 0.0]))
    jitted = jax.jit(lambda b1, b2: qep_jax.OpenSystem(two.h_system, two.h_reservoirs, [b1, b2], two.coupling,
                                                       two.rho_system).betas)(1.0, 2.0)
    np.testing.assert_array_equal(jitted, [1.0, 2.0])
