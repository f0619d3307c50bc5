"""Entropies of Hermitian matrices, with values and derivatives that stay finite.

Convention (documented in the public docstrings and in README.md): eigenvalues that are not
strictly positive -- exact zeros of pure states and tiny negatives from rounding -- are clipped
to zero, and ``0 ln 0 = 0`` contributes neither value nor derivative. The true derivative of the
entropy along a direction that populates an empty level is ``+inf``; qep_jax drops it (a finite,
one-sided convention that keeps ``jax.grad`` usable at pure states).

Derivatives of trace functions ``Tr f(A)`` are written as custom JVPs that need only ``f'`` on
the eigenvalues (``d Tr f(A) = Tr[f'(A) dA]``), so they are exact at degenerate spectra, where
JAX's generic eigenvector derivative divides by zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import _linalg
from ._open_system import InputError, float_dtype, numeric


def _xlogx(x: Array) -> Array:
    """Elementwise ``x ln x`` with ``0`` for ``x <= 0``; mask before the log so the gradient is finite.

    NaN stays NaN (``x > 0`` would have counted it as an empty level and returned 0).
    """
    positive = ~(x <= 0)
    safe = jnp.where(positive, x, 1.0)
    return jnp.where(positive, x * jnp.log(safe), 0.0)


def _xlogx_derivative(x: Array) -> Array:
    positive = ~(x <= 0)
    safe = jnp.where(positive, x, 1.0)
    return jnp.where(positive, jnp.log(safe) + 1.0, 0.0)


def entropy_from_eigenvalues(eigenvalues: Array) -> Array:
    """``-sum_i p_i ln p_i`` over the last axis, with the clipping convention of this module.

    Args:
        eigenvalues: ``(..., n)`` real.
    Returns:
        ``(...)`` real.
    """
    return -jnp.sum(_xlogx(eigenvalues), axis=-1)


def _square_matrices(name: str, value) -> Array:
    """``value`` as a float (or complex) array of shape ``(..., n, n)``, ``n >= 1``, or an InputError
    naming the argument. Integers are promoted; bool is refused: ``a + a^T`` of bool is OR, so a
    bool pure state had entropy ln(2)/2."""
    value = numeric(name, value)
    if value.ndim < 2 or value.shape[-1] != value.shape[-2] or value.shape[-1] == 0:
        raise InputError(f"{name} has shape {value.shape}; expected (..., n, n) square matrices with n >= 1.")
    return jnp.asarray(value, float_dtype(value))


def von_neumann_entropy(rho: Array) -> Array:
    """Von Neumann entropy ``S(rho) = -Tr rho ln rho``.

    Eigenvalues ``<= 0`` (pure states, rounding) are treated as exact zeros: ``0 ln 0 = 0``, and
    they contribute nothing to the derivative, so value and gradient are finite for pure states.
    The derivative ``dS = -Tr[(ln rho + 1) d rho]`` uses eigenvalues only and is exact at
    degenerate spectra.

    Args:
        rho: ``(..., n, n)`` Hermitian, positive semidefinite, unit trace (values not checked here;
            shape and dtype are: integer entries are promoted to the float type, bool is refused).

    Returns:
        ``(...)`` real entropy in nats.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> float(qep_jax.von_neumann_entropy(jnp.eye(2) / 2))  # ln 2
        0.6931...
    """
    return _jit_entropy(_square_matrices("rho", rho))


def _qubit_spectrum(rho: Array, eigenvalues: Array) -> Array:
    """Eigenvalues ``(..., 2)`` ascending of ``2 x 2`` Hermitian ``rho``, the smaller one as
    ``det / lambda_max`` and the larger as ``trace - lambda_min``.

    The eigensolver's smaller eigenvalue has an absolute error ~eps: for a spin near a pure state
    (``lambda_min ~ t^2`` after it starts pure) the entropy lost its relative precision, and in
    float32 came out negative below t ~ 5e-3 (``-(1 + eps) ln(1 + eps)``). The closed form keeps
    the relative precision of the entries. It reads the Hermitian part, as the eigensolver does,
    scaled by the largest entry (``a d - |c|^2`` under- or overflowed for entries ~1e-160 or
    ~1e155). Where the largest eigenvalue is not positive the eigensolver's ``eigenvalues`` are
    returned.
    """
    a, d = jnp.real(rho[..., 0, 0]), jnp.real(rho[..., 1, 1])
    c = (rho[..., 0, 1] + jnp.conj(rho[..., 1, 0])) / 2
    scale = jnp.maximum(jnp.maximum(jnp.abs(a), jnp.abs(d)), jnp.abs(c))
    scale = jnp.where(scale > 0, scale, 1.0)
    a_, d_, c_ = a / scale, d / scale, c / scale
    off = jnp.real(c_ * jnp.conj(c_))
    largest = (a_ + d_) / 2 + jnp.sqrt(((a_ - d_) / 2) ** 2 + off)  # no cancellation for trace >= 0
    state = largest > 0
    smallest = scale * ((a_ * d_ - off) / jnp.where(state, largest, 1.0))
    closed = jnp.stack([smallest, (a + d) - smallest], axis=-1).astype(eigenvalues.dtype)
    return jnp.where(state[..., None], closed, eigenvalues)


def _spectrum(rho: Array, eigenvalues: Array) -> Array:
    return _qubit_spectrum(rho, eigenvalues) if rho.shape[-1] == 2 else eigenvalues


def _qubit_entropy(rho: Array, spectrum: Array) -> Array:
    """``S`` of ``2 x 2`` ``rho`` from its :func:`_qubit_spectrum`. Near unit trace,
    ``lambda_max ln lambda_max`` is ``lambda_max log1p((Tr rho - 1) - lambda_min)``: ``ln`` of
    ``1 - lambda_min`` rounded to 1 is 0 and dropped ``~lambda_min`` from ``S ~ lambda_min (1 - ln
    lambda_min)`` (2.4% at t = 1e-7 for a spin starting pure). Far from it, the plain ``ln``."""
    smallest, largest = spectrum[..., 0], spectrum[..., 1]
    # The trace as rounded (a + d), not the exact sum of the entries: a unit-trace state whose
    # larger population 1 - p rounded to 1 has entries summing to 1 + p, and its exact entropy
    # misses ~p; with the rounded trace 1 it is that of (1 - lambda_min, lambda_min).
    excess = jnp.real(rho[..., 0, 0]) + jnp.real(rho[..., 1, 1]) - 1
    near = jnp.abs(excess) < 0.5
    positive = largest > 0
    log_largest = jnp.where(near, jnp.log1p(jnp.where(near, excess - smallest, 0.0)),
                            jnp.log(jnp.where(positive, largest, 1.0)))
    return -_xlogx(smallest) - jnp.where(positive, largest * log_largest, 0.0)


def _entropy(rho: Array, eigenvalues: Array) -> Array:
    """``S`` from the eigensolver's ``eigenvalues`` of ``rho``, to relative precision for a spin."""
    if rho.shape[-1] == 2:
        return _qubit_entropy(rho, _qubit_spectrum(rho, eigenvalues))
    return entropy_from_eigenvalues(eigenvalues)


@jax.custom_jvp
def _von_neumann_entropy(rho: Array) -> Array:
    return _entropy(rho, _linalg.eigvalsh(rho))


@_von_neumann_entropy.defjvp
def _von_neumann_entropy_jvp(primals, tangents):
    (rho,), (drho,) = primals, tangents
    eigenvalues, vectors = _linalg.eigh(rho)
    value = _entropy(rho, eigenvalues)
    eigenvalues = _spectrum(rho, eigenvalues)
    weights = _xlogx_derivative(eigenvalues)
    return value, -jnp.sum(weights * _linalg.diagonal_in_basis(vectors, drho), axis=-1)


def _log_divided_difference(mu: Array) -> Array:
    """``L_ij = (ln mu_i - ln mu_j) / (mu_i - mu_j)``, ``1 / mu_i`` on the diagonal; ``(..., n) -> (..., n, n)``.

    Written as ``log1p(v) / (v m)`` with ``m`` the smaller of the two, ``v = M / m - 1 >= 0`` (``M`` the
    larger) and a series for small ``v``, so close but unequal eigenvalues do not cancel
    catastrophically, and ``L`` is symmetric by construction. (With ``u = mu_i / mu_j - 1`` for every
    pair, ``log1p`` of ``u`` near -1 (``mu_i << mu_j``) kept only ``eps mu_j / mu_i`` of relative
    accuracy: 2.5e-5 at a ratio of 1e-14.) Entries with a non-positive eigenvalue are set to zero
    (outside the support the logarithm is clipped, see module doc).
    """
    x = mu[..., :, None]
    y = mu[..., None, :]
    valid = (x > 0) & (y > 0)
    big = jnp.where(valid, jnp.maximum(x, y), 1.0)
    low = jnp.where(valid, jnp.minimum(x, y), 1.0)
    v = big / low - 1.0
    small = v < 1e-4
    huge = v > 1e300  # M / m beyond float range: the plain difference quotient has no cancellation there
    # Placeholder 1e-4, the switch point (not 1): XLA may evaluate v more than once with different
    # rounding, and a decision split between the copies right at a switch then costs only rounding
    # (with a placeholder of 1 such a split would give ln 2; _propagator_rules._expm1_ratio met one at 0).
    v_mid = jnp.where(small, 1e-4, jnp.where(huge, 1.0, v))
    series = 1.0 - v / 2 + v**2 / 3 - v**3 / 4
    ratio = jnp.where(small, series, jnp.log1p(v_mid) / v_mid) / low
    direct = (jnp.log(big) - jnp.log(low)) / jnp.where(huge, big - low, big)
    return jnp.where(valid, jnp.where(huge, direct, ratio), 0.0)


def _log_argument(mu: Array) -> Array:
    """Eigenvalues for ``ln``: raised to the smallest normal number, NaN where clearly negative.

    Below ``-10 n eps max(1, |mu|)`` the input is not positive semidefinite beyond rounding; the
    floor made ``logm_hermitian(-I)`` a finite ``-708 I``.
    """
    floored = jnp.maximum(mu, float(jnp.finfo(mu.dtype).tiny))
    return jnp.where(mu < -_support_tolerance(mu), jnp.nan, floored)


def logm_hermitian(a: Array) -> Array:
    """Principal logarithm of a Hermitian positive-definite matrix, ``W diag(ln mu) W^dag``.

    Eigenvalues below the smallest normal number of the dtype are raised to it (so a singular
    input gives a large negative but finite logarithm instead of ``-inf``/NaN); a matrix with an
    eigenvalue below ``-10 n eps max(1, |mu|)`` (negative beyond rounding) gives NaN. The derivative is
    the Daleckii-Krein formula with divided differences of ``ln``, stable for close eigenvalues.

    Args:
        a: ``(..., n, n)`` Hermitian positive definite (values not checked here; integer entries are
            promoted to the float type, bool is refused).

    Returns:
        ``(..., n, n)`` Hermitian.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> qep_jax.logm_hermitian(jnp.diag(jnp.array([1.0, jnp.e])))
        Array([[0., 0.], [0., 1.]], ...)
    """
    return _jit_logm(_square_matrices("a", a))


@jax.custom_jvp
def _logm_hermitian(a: Array) -> Array:
    mu, w = _linalg.eigh(a)
    mu = _log_argument(mu)
    return jnp.einsum("...ij,...j,...kj->...ik", w, jnp.log(mu), w.conj())


@_logm_hermitian.defjvp
def _logm_hermitian_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    # The value depends on herm(a) only (eigh reads it so); so must the tangent.
    da = _linalg.hermitian_part(da)
    mu, w = _linalg.eigh(a)
    mu = _log_argument(mu)
    value = jnp.einsum("...ij,...j,...kj->...ik", w, jnp.log(mu), w.conj())
    da_eig = jnp.einsum("...ji,...jk,...kl->...il", w.conj(), da, w)
    dlog = _log_divided_difference(mu) * da_eig
    return value, jnp.einsum("...ij,...jk,...lk->...il", w, dlog, w.conj())


def _support_tolerance(mu: Array) -> Array:
    n = mu.shape[-1]
    eps = jnp.finfo(mu.dtype).eps
    return 10 * n * eps * jnp.maximum(jnp.max(jnp.abs(mu), axis=-1, keepdims=True), 1.0)


@jax.custom_jvp
def _cross_term(a: Array, b: Array) -> Array:
    """``Tr[a ln b]``; ``-inf`` where ``a`` has weight outside the support of ``b``."""
    mu, w = _linalg.eigh(b)
    weight = _linalg.diagonal_in_basis(w, a)
    tol = _support_tolerance(mu)
    inside = mu > tol
    log_mu = jnp.log(jnp.where(inside, mu, 1.0))
    outside_weight = jnp.any(~inside & (weight > tol), axis=-1)
    finite = jnp.sum(jnp.where(inside, weight * log_mu, 0.0), axis=-1)
    # A NaN eigenvalue is neither inside nor outside the support: it made Tr[a ln b] = 0.
    nan = jnp.any(jnp.isnan(mu) | jnp.isnan(weight), axis=-1)
    return jnp.where(nan, jnp.nan, jnp.where(outside_weight, -jnp.inf, finite))


@_cross_term.defjvp
def _cross_term_jvp(primals, tangents):
    (a, b), (da, db) = primals, tangents
    mu, w = _linalg.eigh(b)
    tol = _support_tolerance(mu)
    inside = mu > tol
    value = _cross_term(a, b)
    log_mu = jnp.log(jnp.where(inside, mu, 1.0))
    # d Tr[a ln b] = Tr[da ln b] + sum_ij L_ij a~_ji db~_ij (Daleckii-Krein in the eigenbasis of b).
    dterm_a = jnp.sum(jnp.where(inside, log_mu, 0.0) * _linalg.diagonal_in_basis(w, da), axis=-1)
    a_eig = jnp.einsum("...ji,...jk,...kl->...il", w.conj(), a, w)
    db_eig = jnp.einsum("...ji,...jk,...kl->...il", w.conj(), db, w)
    mu_masked = jnp.where(inside, mu, 0.0)
    dterm_b = jnp.real(
        jnp.sum(_log_divided_difference(mu_masked) * jnp.swapaxes(a_eig, -1, -2) * db_eig, axis=(-2, -1))
    )
    # At -inf (weight outside the support) the terms above are the derivative of the finite part
    # only: a finite gradient of an infinite D[rho||sigma]. A NaN factor (not a NaN constant, which
    # reverse mode would transpose to a zero cotangent) makes jvp and grad NaN there.
    undefined = jnp.where(jnp.isneginf(value), jnp.nan, 1.0)
    return value, undefined * (dterm_a + dterm_b)


def relative_entropy(rho: Array, sigma: Array) -> Array:
    """Quantum relative entropy ``D[rho || sigma] = Tr rho ln rho - Tr rho ln sigma >= 0``.

    Returns ``+inf`` when ``rho`` has weight (above ``10 n eps``) outside the support of
    ``sigma``. The support is resolved like the eigendecomposition resolves it: eigenvalues of
    ``sigma`` up to ``10 n eps max(1, |sigma|)`` (4.4e-15 for a 2 x 2 in float64) count as zero,
    so a full-rank ``sigma`` with a smaller eigenvalue also gives ``+inf``. Where the value is
    ``+inf`` its derivatives (``jvp``, ``grad``) are NaN, so that an optimizer cannot take a finite
    step from an infinite objective. Zero eigenvalues of ``rho`` follow the ``0 ln 0 = 0``
    convention of :func:`von_neumann_entropy`. Derivatives use eigenvalue divided differences only.

    Args:
        rho: ``(..., n, n)`` density matrix (values not checked here, as in
            :func:`von_neumann_entropy`; integer entries are promoted to the float type, bool is refused).
        sigma: ``(..., n, n)`` density matrix (the same); the batch shapes ``...`` of ``rho`` and
            ``sigma`` must broadcast.

    Returns:
        ``(...)`` real, in nats.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> rho = jnp.diag(jnp.array([1.0, 0.0])); sigma = jnp.eye(2) / 2
        >>> float(qep_jax.relative_entropy(rho, sigma))  # ln 2
        0.6931...
    """
    rho, sigma = _square_matrices("rho", rho), _square_matrices("sigma", sigma)
    if rho.shape[-1] != sigma.shape[-1]:
        raise InputError(f"rho is {rho.shape[-1]} x {rho.shape[-1]} but sigma is {sigma.shape[-1]} x "
                         f"{sigma.shape[-1]}; both must act on the same space.")
    try:
        np.broadcast_shapes(rho.shape[:-2], sigma.shape[:-2])
    except ValueError:
        raise InputError(f"rho has batch shape {rho.shape[:-2]} and sigma {sigma.shape[:-2]}, which do not "
                         f"broadcast; give one sigma or one per rho.") from None
    return _jit_relative_entropy(rho, sigma)


# The public kernels run compiled: op by op, jax.grad of an 8 x 8 entropy took 15 ms instead of
# 0.04 ms. Validation stays outside, in Python, on the concrete arguments.
_jit_entropy = jax.jit(lambda rho: _von_neumann_entropy(rho))
_jit_logm = jax.jit(lambda a: _logm_hermitian(a))
_jit_relative_entropy = jax.jit(lambda rho, sigma: -_von_neumann_entropy(rho) - _cross_term(rho, sigma))
