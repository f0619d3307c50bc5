"""Derivative rules for the spectral propagator and the reservoir Gibbs states.

Every quantity of :func:`qep_jax.evolve` is a smooth function of ``H``, of the reservoirs' Gibbs
states and of ``rho_s(0)``, but it is computed from eigenvectors, whose JAX derivative divides
by ``E_a - E_b`` and is NaN/inf at exact degeneracies. The two ``custom_jvp`` functions here give
derivatives that only use divided differences of eigenvalues (Daleckii-Krein):

* :func:`spectral_series` -- from ``(H, rho(0), reservoir observables, rho_s(0), sqrt(rho_r^eq), t)``
  to the expectation series ``<O_k>_t`` (the cheap quantities) and the reservoir entropies
  ``S_r(t)`` (the expensive ones). In the eigenbasis of ``H`` (tildes) the derivative of the
  propagator is ``d U(t)~ = dH~ o F(t)`` with ``F_ac = (phi_a - phi_c) / (E_a - E_c)``,
  ``phi_a = exp(-i E_a t)``, which tends to ``-i t phi_a`` when ``E_a = E_c``.
* :func:`thermal_state` -- ``exp(-beta G) / Z``, its square root, ``ln Z``, entropy and ``<G>``,
  with the divided differences of ``exp(-beta x)``.

Cost of the cheap tangent. With pairs split into *far* (``|E_a - E_c| t_max > tau``) and *near*
ones, ``F`` is ``(phi_a - phi_c) R_ac`` (``R = 1 / (E_a - E_c)``) on far pairs and the Taylor form
``phi_a (-i t - t^2 (E_c - E_a) / 2)`` on near pairs, so every tangent is
``sum_ab phi_a phi_b* (M1 + t M2 + t^2 M3)_ab`` with ``D x D`` matrices ``M`` built once
(``O(D^3)``); each time point then costs ``O(D^2)`` forward and, after JAX transposes the rule
for reverse mode, ``O(D^2)`` backward. ``tau = 3e-4`` balances the error of the far form against
the truncation error of the near form (``~ x^2 / 6`` relative, ``x = |E_a - E_c| t``). The far
form's error grows like ``eps / x^2``, not ``eps / x``: inside a near pair the eigenvectors are only
determined to ``eps / |E_a - E_c|``, and ``1 / (E_a - E_c)`` multiplies that again. Both errors are
~1e-8 relative at the threshold. Measured for spin-GORM at ``Delta`` = 2 level spacings,
``lambda = 3e-6``, ``t = 11``: ``d heat / d Delta`` was 18% off with ``tau = 1e-5`` and is 5e-11 off
with ``3e-4``.

Memory. The time loops inside the rules are ``jax.checkpoint``-ed per time chunk, so reverse mode
keeps no per-time residuals (``X(t)`` of size ``D x R`` would otherwise be stored for every ``t``).

Higher derivatives differentiate these rules with JAX's own ``eigh`` derivative: correct at
generic points, not at exact degeneracies.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.custom_derivatives import SymbolicZero

from . import _linalg

from ._entropy import entropy_from_eigenvalues, von_neumann_entropy
from ._open_system import _kron_all
from ._spectral import (
    change_at,
    expectation_at,
    Spectrum,
    cross_split,
    gram_split,
    propagate_factor,
    product_factor_to_eigenbasis,
    propagate_factor_split,
    reduced_from_factor,
    reduced_from_split,
    reservoirs_from_factor,
    split_rows,
    system_last,
)

# Near/far threshold on |E_a - E_c| * max|t| (see module docstring).
NEAR_DEGENERATE = 3e-4
# Checkpoint the per-time-chunk bodies of the derivative rules (read at trace time; benchmarks toggle it).
CHECKPOINT_TIME_CHUNKS = True


class SeriesConfig(NamedTuple):
    """Static description of the observables of :func:`spectral_series` (hashable)."""

    dims: tuple[int, ...]  # (d_s, d_1, ..., d_K)
    factors: tuple[int, ...]  # tensor factor of each reservoir observable (1..K)
    reservoir_entropies: bool
    time_batch_size: int
    system_rank: int
    diagonal_reservoirs: bool = False  # the reservoir observables and Gibbs states are diagonal
    rebuilt_entry: int | None = None  # see system_pairs


def system_pairs(d_s: int, rebuilt_entry: int | None) -> tuple[tuple[int, int], ...]:
    """Entries ``(i, j)`` of ``rho_s(t)`` that :func:`spectral_series` computes: the upper triangle,
    without the diagonal entry ``rebuilt_entry`` unless that is ``None``. The others follow from
    ``rho_s(t) = rho_s(t)^dag`` and ``Tr rho_s(t) = Re Tr rho(0)``: 2 observables instead of 4
    for a spin.

    The rebuilt entry carries an absolute error ~eps, so it must be the population that stays
    large: callers pass the largest initial population (a population that starts at 0 and stays
    ~1e-17 came out as noise, even negative, and its entropy derivative -(ln p + 1) dp wrong by
    20x). ``None`` computes every diagonal entry directly (one more observable).
    """
    return tuple((i, j) for i in range(d_s) for j in range(i, d_s) if not i == j == rebuilt_entry)


def n_series_observables(d_s: int, n_reservoir_ops: int, rebuilt_entry: int | None) -> int:
    """Columns of :attr:`Series.values`: the :func:`system_pairs` and the reservoir observables."""
    return len(system_pairs(d_s, rebuilt_entry)) + n_reservoir_ops


def system_state_from_pairs(pair_values: Array, d_s: int, trace: Array, rebuilt_entry: int | None) -> Array:
    """``rho_s(t)`` ``(T, d_s, d_s)`` from the :func:`system_pairs` columns ``(T, n_pairs)``.

    ``trace`` is ``Re Tr rho(0)``, conserved by the evolution; it fixes the diagonal entry
    ``rebuilt_entry`` (if not ``None``).
    """
    rho = jnp.zeros(pair_values.shape[:1] + (d_s, d_s), pair_values.dtype)
    for k, (i, j) in enumerate(system_pairs(d_s, rebuilt_entry)):
        v = pair_values[:, k]
        if i == j:
            rho = rho.at[:, i, i].set(jnp.real(v))
        else:
            rho = rho.at[:, i, j].set(v).at[:, j, i].set(v.conj())
    if rebuilt_entry is None:
        return rho
    rest = trace - jnp.real(jnp.trace(rho, axis1=1, axis2=2))
    return rho.at[:, rebuilt_entry, rebuilt_entry].set(rest)


class Series(NamedTuple):
    """Output of :func:`spectral_series`.

    values: ``(T, n_pairs + n_ops)`` complex: ``rho_s(t)_ij = <(|j><i| (x) 1)>_t`` for the
        :func:`system_pairs` ``(i, j)`` in that order, then ``<O_k>_t`` of the reservoir observables.
        Every value is that of the Hermitian part of ``rho(0)`` (see :func:`spectral_series`).
    changes: ``(T, n_pairs + n_ops)`` ``values`` minus their ``t = 0`` values, computed without
        that cancellation (:func:`~qep_jax._spectral.change_at`): exactly 0 at ``t = 0`` and
        accurate to relative rounding as ``t -> 0``.
    total_energy: ``()`` ``<H>_0``.
    reservoir_entropy: ``(T, K)`` ``S_r(t)`` or ``None``.
    joint_reservoir_entropy: ``(T,)`` ``S(rho_R(t))`` for ``K >= 2``, else ``None``.
    """

    values: Array
    changes: Array
    total_energy: Array
    reservoir_entropy: Array | None
    joint_reservoir_entropy: Array | None


def apply_on_factor(op: Array, w: Array, dims: tuple[int, ...], factor: int) -> Array:
    """``(1 (x) op (x) 1) @ w`` for ``w`` of shape ``(D, n)`` without forming the ``D x D`` operator.

    A 1-D ``op`` is the diagonal of a diagonal operator: the rows of ``w`` are scaled, ``O(D n)``.
    """
    tensor = w.reshape(dims + (w.shape[-1],))
    if op.ndim == 1:
        shape = [1] * tensor.ndim
        shape[factor] = op.shape[0]
        return (tensor * op.reshape(shape)).reshape(w.shape)
    out = jnp.moveaxis(jnp.tensordot(op, tensor, axes=([1], [factor])), 0, factor)
    return out.reshape(w.shape)


def system_factor(rho_system: Array, rank: int) -> Array:
    """``L`` with ``L L^dag = rho_s(0)``, keeping the ``rank`` largest eigenvalues; ``(d_s, rank)``."""
    lam, v = _linalg.eigh(rho_system)
    lam = jnp.clip(lam[-rank:], 0.0, None)
    return v[:, -rank:] * jnp.sqrt(lam)


def _is_zero(tangent) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


def _commutator(a: Array, b: Array) -> Array:
    return a @ b - b @ a


def _batch(n_times: int, time_batch_size: int) -> int:
    return min(time_batch_size, n_times)


# --------------------------------------------------------------------------------------------
# Spectral series: the primal computation.
# --------------------------------------------------------------------------------------------


class _Setup(NamedTuple):
    energies: Array
    vectors: Array
    rho0_eig: Array  # (D, D) W^dag rho(0) W
    observables_t: Array  # (n, D, D) O~^T of every observable
    weights: Array  # (n, D, D) rho0~ o O~^T
    total_energy: Array
    system_factor: Array  # (d_s, rank) L, L L^dag = rho_s(0)
    factor_eig: Array  # (D, R) W^dag (L (x) sqrt rho_1^eq (x) ...)


def _setup(config: SeriesConfig, h, rho0, reservoir_ops, rho_system, sqrt_eqs) -> _Setup:
    # rho0 enters only through its tangent: the primal uses rho(0) = L L^dag (x) S^2 (see below).
    del rho0
    dims = config.dims
    d_s, total = dims[0], math.prod(dims)
    spectrum = Spectrum(*_linalg.eigh(h))  # not diagonalize: h is built, and checked, by OpenSystem
    w = spectrum.vectors
    # rho(0) = (L (x) S)(L (x) S)^dag with S = sqrt(rho_1^eq) (x) ...: W^dag rho(0) W = C C^dag with
    # C = W^dag (L (x) S), 2 r D^2 (M + M / d_s) flops for rank(rho_s(0)) = r instead of the 4 D^3 of
    # rotating the dense state. It is Hermitian by construction, so every output is a function of
    # herm(rho(0)) and the other entries of rho_s(t) follow from the system_pairs.
    factor = system_factor(rho_system, config.system_rank)
    if config.diagonal_reservoirs:  # diagonals only: O(D M) instead of O(D M^2) products
        sqrt_eqs = [jnp.diagonal(q) for q in sqrt_eqs]
        reservoir_ops = [jnp.diagonal(o) for o in reservoir_ops]
    factor_eig = product_factor_to_eigenbasis(spectrum, factor, _kron_all(list(sqrt_eqs)))
    rho0_eig = factor_eig @ factor_eig.conj().T
    # rho_s(t)_ij = <(|j><i| (x) 1)>_t: O~_ba = sum_R conj(W_(jR)b) W_(iR)a, weight M_ab = rho0~_ab O~_ba.
    w_blocks = w.reshape(d_s, total // d_s, total)
    # transposed/adjoint: a row-major left operand runs XLA's CPU dot at twice the speed.
    system_t = [_linalg.transposed(w_blocks[i]) @ w_blocks[j].conj() for i, j in system_pairs(d_s, config.rebuilt_entry)]
    wd = _linalg.adjoint(w)
    reservoir_eig = [wd @ apply_on_factor(op, w, dims, f) for op, f in zip(reservoir_ops, config.factors)]
    # O~^T = conj(O~) for Hermitian O. Writing o.T made XLA merge the transpose into the product
    # and fall back to a slow batched dot (0.3 ms of a 13 ms realization at N = 200).
    observables_t = jnp.stack(system_t + [o.conj() for o in reservoir_eig])
    weights = observables_t * rho0_eig
    # <H> is conserved, so <V>_t = <H>_0 - <H_s>_t - sum_r <H_r>_t needs no observable of its own.
    total_energy = jnp.sum(spectrum.energies * jnp.real(jnp.diagonal(rho0_eig)))
    return _Setup(spectrum.energies, w, rho0_eig, observables_t, weights, total_energy, factor, factor_eig)


def _entropies(config: SeriesConfig, x: Array) -> dict:
    """Reservoir entropies from the complex factor ``X(t)`` ``(D, R)``."""
    dims = config.dims
    n_res = len(dims) - 1
    out = {"reservoir_entropy": jnp.stack([von_neumann_entropy(reduced_from_factor(x, dims, r + 1))
                                           for r in range(n_res)])}
    if n_res > 1:
        out["joint_reservoir_entropy"] = von_neumann_entropy(reservoirs_from_factor(x, dims[0]))
    return out


def _entropies_split(config: SeriesConfig, s: _Setup, t: Array) -> dict:
    """Reservoir entropies for real ``W`` and ``C``: ``Re X`` and ``Im X`` by real products."""
    dims = config.dims
    n_res = len(dims) - 1
    if n_res == 1:
        # Rows ordered (reservoir, system): rho_r(t) is then three GEMMs on contiguous blocks.
        w, moved = system_last(s.vectors, dims)
        re, im = propagate_factor_split(Spectrum(s.energies, w), s.factor_eig, t)
        return {"reservoir_entropy": von_neumann_entropy(reduced_from_split(re, im, moved, 0))[None]}
    re, im = propagate_factor_split(Spectrum(s.energies, s.vectors), s.factor_eig, t)
    return {
        "reservoir_entropy": jnp.stack([von_neumann_entropy(reduced_from_split(re, im, dims, r + 1))
                                        for r in range(n_res)]),
        # The joint reservoir state keeps everything but the system factor.
        "joint_reservoir_entropy": von_neumann_entropy(
            reduced_from_split(re, im, (dims[0], math.prod(dims[1:])), 1)),
    }


def _primal_series(config: SeriesConfig, s: _Setup, times: Array) -> Series:
    # Real W and C (real symmetric H, real states): propagate Re X and Im X with real products.
    split = config.reservoir_entropies and not (
        jnp.iscomplexobj(s.vectors) or jnp.iscomplexobj(s.factor_eig))

    initial = jnp.sum(s.weights, axis=(-2, -1))
    row_sums, col_sums = jnp.sum(s.weights, axis=-1), jnp.sum(s.weights, axis=-2)

    def at_time(t):
        out = {"changes": change_at(s.energies, s.weights, initial, row_sums, col_sums, t)}
        if config.reservoir_entropies:
            if split:
                out.update(_entropies_split(config, s, t))
            else:
                x = propagate_factor(Spectrum(s.energies, s.vectors), s.factor_eig, t)
                out.update(_entropies(config, x))
        return out

    series = jax.lax.map(at_time, times, batch_size=_batch(times.shape[0], config.time_batch_size))
    changes = series["changes"]
    values = initial + changes
    return Series(values, changes, s.total_energy, series.get("reservoir_entropy"),
                  series.get("joint_reservoir_entropy"))


def _thermal_spectrum(g: Array, diagonal: bool) -> tuple[Array, Array | None]:
    """``(eps, v)`` of ``G = v diag(eps) v^dag``; ``v = None`` (the identity) for a diagonal ``G``."""
    if diagonal:
        return jnp.real(jnp.diagonal(g)), None
    return _linalg.eigh(g)


def _thermal_state(g: Array, beta: Array, diagonal: bool) -> tuple[Array, Array, Array, Array, Array]:
    eps, v = _thermal_spectrum(g, diagonal)
    p, log_z, mean = _gibbs_weights(eps, beta)
    if v is None:
        rho, sqrt_rho = jnp.diag(p).astype(g.dtype), jnp.diag(jnp.sqrt(p)).astype(g.dtype)
    else:
        rho = (v * p) @ v.conj().T
        sqrt_rho = (v * jnp.sqrt(p)) @ v.conj().T
    return rho, sqrt_rho, log_z, entropy_from_eigenvalues(p), mean


thermal_state = jax.custom_jvp(_thermal_state, nondiff_argnums=(2,))
thermal_state.__doc__ = """Gibbs state of ``G`` at ``beta`` and its companions, with degeneracy-safe derivatives.

Returns ``(rho, sqrt_rho, ln Z, S, <G>)`` with ``rho = exp(-beta G) / Z`` ``(d, d)``,
``sqrt_rho = exp(-beta G / 2) / sqrt(Z)``, ``S = -Tr rho ln rho = ln Z + beta <G>``.
``diagonal`` (static): ``G`` is diagonal, so its eigenbasis is the standard one and no ``eigh``
is needed. Only the value is assumed diagonal; the tangent ``dG`` may be any Hermitian matrix.
"""


def _gibbs_weights(eps: Array, beta: Array) -> tuple[Array, Array, Array]:
    """``(p, ln Z, <G>)`` for the spectrum ``eps`` ``(d,)``, exact to rounding for any energy offset.

    Energies are measured from the level of largest weight: ``p = exp(logits - logsumexp)`` alone
    sums to ``1 + O(|beta G| eps)``, which a constant offset in ``G`` (physically irrelevant) turns
    into an error ``O(beta |offset|^2 eps)`` in ``beta <G>_t + ln Z`` (2e-4 nats at offset 1e6, beta 2).
    """
    logits = -beta * eps
    ref = jnp.argmax(logits)
    shifted = eps - eps[ref]
    w = jnp.exp(-beta * shifted)
    total = jnp.sum(w)
    p = w / total
    log_z = jnp.log(total) - beta * eps[ref]
    return p, log_z, eps[ref] + jnp.sum(p * shifted)


def _expm1_ratio(y: Array) -> Array:
    """``expm1(y) / y`` for ``y <= 0``, ``1`` at ``y = 0``.

    Its Taylor series ``1 + y/2 + y^2/6 + y^3/24 + y^4/120`` below ``|y| = 1e-3`` (truncation under
    ``1e-17``), not a test for ``y == 0``: XLA may evaluate ``y`` more than once with different
    rounding (fused or not), and the diagonal of a divided difference, ``|x_a - x_a|``, came out 0
    in the test and ``~1e-17`` in the quotient under ``jax.jit(jax.jacfwd(...))``, giving
    ``expm1(1) / 1 = 1.718`` instead of 1 (``d I / d mu`` -0.241 instead of -0.029). The quotient's
    placeholder is the switch point itself, so even a split decision right at ``|y| = 1e-3`` costs
    only rounding.
    """
    small = jnp.abs(y) < 1e-3
    safe = jnp.where(small, -1e-3, y)
    series = 1 + y / 2 * (1 + y / 3 * (1 + y / 4 * (1 + y / 5)))
    return jnp.where(small, series, jnp.expm1(safe) / safe)


@thermal_state.defjvp
def _thermal_state_jvp(diagonal, primals, tangents):
    (g, beta), (dg, dbeta) = primals, tangents
    value = thermal_state(g, beta, diagonal)
    eps, v = _thermal_spectrum(g, diagonal)
    p, _, mean = _gibbs_weights(eps, beta)
    sqrt_p = jnp.sqrt(p)
    dg_eig = _linalg.hermitian_part(dg)
    if v is not None:
        dg_eig = _linalg.adjoint(v) @ dg_eig @ v
    # Divided differences of p(x) = exp(-beta x - ln Z) on the spectrum, written around the larger
    # of the two weights so nothing overflows: (p_a - p_b) / (e_a - e_b) = -beta max(p) h(-|x_ab|),
    # h(y) = expm1(y) / y, x_ab = beta (e_b - e_a); the diagonal is p'(e_a) = -beta p_a.
    # beta times the difference of the stored energies, not the difference of two products: XLA may
    # fuse -beta e_a - (-beta e_a) into one FMA, which leaves the product's rounding error (~1e-17).
    gap = jnp.abs(beta * (eps[:, None] - eps[None, :]))
    div_p = -beta * jnp.maximum(p[:, None], p[None, :]) * _expm1_ratio(-gap)
    div_sqrt = -beta / 2 * jnp.maximum(sqrt_p[:, None], sqrt_p[None, :]) * _expm1_ratio(-gap / 2)
    deps = jnp.real(jnp.diagonal(dg_eig))
    dlog_z = -dbeta * mean - beta * jnp.sum(p * deps)
    # dlog_z + dbeta eps, without cancelling a large energy offset.
    dlog_p = dbeta * (eps - mean) - beta * jnp.sum(p * deps)
    drho_eig = dg_eig * div_p - jnp.diag(p * dlog_p)
    dsqrt_eig = dg_eig * div_sqrt - jnp.diag(sqrt_p * dlog_p / 2)
    # Tr drho = 0: measure eps from <G> there too, and S = ln Z + beta <G> gives
    # dS = beta (d<G> - sum p deps) with the offset-sized terms cancelled analytically.
    dmean = jnp.sum(p * deps) + jnp.sum((eps - mean) * jnp.real(jnp.diagonal(drho_eig)))
    dentropy = beta * (dmean - jnp.sum(p * deps))
    rotate = lambda m: (m if v is None else v @ m @ v.conj().T).astype(value[0].dtype)  # noqa: E731
    return value, (rotate(drho_eig), rotate(dsqrt_eig), dlog_z, dentropy, dmean)


# --------------------------------------------------------------------------------------------
# Spectral series with the Daleckii-Krein tangent.
# --------------------------------------------------------------------------------------------


def _reduced_pair(a: Array, b: Array, dims: tuple[int, ...], keep: int) -> Array:
    """``Tr_{not keep} a b^dag`` for ``a, b`` of shape ``(D, R)``; ``(d_keep, d_keep)``."""
    n = len(dims)
    xa = a.reshape(dims + (a.shape[-1],))
    xb = b.reshape(dims + (b.shape[-1],))
    left = list(range(n)) + [n]
    right = [i if i != keep else n + 1 for i in range(n)] + [n]
    return jnp.einsum(xa, left, xb.conj(), right, [keep, n + 1])


def _reservoirs_pair(a: Array, b: Array, system_dim: int) -> Array:
    """``Tr_s a b^dag`` ``(D/d_s, D/d_s)``."""
    xa = a.reshape(system_dim, -1, a.shape[-1])
    xb = b.reshape(system_dim, -1, b.shape[-1])
    return jnp.einsum("saq,sbq->ab", xa, xb.conj())


def _spectral_series(config: SeriesConfig, h, rho0, reservoir_ops, rho_system, sqrt_eqs, times) -> Series:
    return _primal_series(config, _setup(config, h, rho0, reservoir_ops, rho_system, sqrt_eqs), times)


spectral_series = jax.custom_jvp(_spectral_series, nondiff_argnums=(0,))
spectral_series.__doc__ = """Expectation series and reservoir entropies of the unitary evolution under ``H``.

``<O_k>_t = Tr[O_k U(t) rho(0) U(t)^dag]`` with ``U(t) = exp(-i H t)`` and
``rho(0) = rho_s(0) (x) sqrt_1^2 (x) ...``, for the system operators ``|j><i| (x) 1`` of the
:func:`system_pairs` and the embedded ``reservoir_ops``; with ``config.reservoir_entropies`` also
``S_r(t)`` of ``rho_r(t)`` (and the joint reservoir entropy for ``K >= 2``).

Values are computed from ``rho_system`` (its ``config.system_rank`` largest eigenvalues) and
``sqrt_eqs``; ``rho0`` must be their product state and only carries its tangent into the
derivative of the expectation series.

Args:
    config: static :class:`SeriesConfig`.
    h: ``(D, D)`` Hermitian Hamiltonian.
    rho0: ``(D, D)`` initial state.
    reservoir_ops: tuple of ``(d_r, d_r)`` observables on factors ``config.factors``.
    rho_system: ``(d_s, d_s)`` ``rho_s(0)``.
    sqrt_eqs: tuple of ``(d_r, d_r)`` square roots of the reservoir Gibbs states.
    times: ``(T,)``.

Returns:
    :class:`Series`. Derivatives with respect to every array argument use eigenvalue divided
    differences only (module docstring).
"""


def _zero_if_symbolic(tangent, like):
    return jnp.zeros_like(like) if _is_zero(tangent) else tangent


def _spectral_series_jvp(config: SeriesConfig, primals, tangents):
    h, rho0, reservoir_ops, rho_system, sqrt_eqs, times = primals
    dh, drho0, dops, drho_system, dsqrt, dtimes = tangents
    s = _setup(config, h, rho0, reservoir_ops, rho_system, sqrt_eqs)
    out = _primal_series(config, s, times)

    dims = config.dims
    d_s, n_pairs = dims[0], len(system_pairs(dims[0], config.rebuilt_entry))
    e, w = s.energies, s.vectors
    spectrum = Spectrum(e, w)
    wd = _linalg.adjoint(w)
    ctype = jnp.result_type(w.dtype, jnp.complex64)
    rho, ot = s.rho0_eig, s.observables_t
    # eigh reads only (H + H^dag) / 2, so a tangent's anti-Hermitian part does not change the value.
    dh_eig = None if _is_zero(dh) else wd @ _linalg.hermitian_part(dh) @ w
    drho_eig = None if _is_zero(drho0) else wd @ _linalg.hermitian_part(drho0) @ w
    with_dt = not _is_zero(dtimes)
    dtimes = _zero_if_symbolic(dtimes, times)

    # ---- cheap set: tangent weights M1 + t M2 + t^2 M3 (+ dt M_t), see module docstring ----
    m1 = jnp.zeros(ot.shape, ctype)
    if drho_eig is not None:
        m1 = m1 + drho_eig * ot
    for k, (dop, f) in enumerate(zip(dops, config.factors)):
        if not _is_zero(dop):
            dot_k = (wd @ apply_on_factor(dop, w, dims, f)).T
            m1 = m1.at[n_pairs + k].add(rho * dot_k)
    m2 = m3 = None
    if dh_eig is not None:
        t_max = jnp.max(jnp.abs(times))
        gap = e[None, :] - e[:, None]  # gap_ac = E_c - E_a
        near = jnp.abs(gap) * t_max <= NEAR_DEGENERATE
        inverse_gap = jnp.where(near, 0.0, -1.0 / jnp.where(near, 1.0, gap))  # 1 / (E_a - E_c) on far pairs
        a = inverse_gap * dh_eig
        b1 = jnp.where(near, dh_eig, 0.0)
        b2 = b1 * gap
        at = _linalg.transposed(a)
        m1 = m1 + ot * _commutator(a, rho) + rho * (ot @ at - at @ ot)
        m2 = -1j * ot * _commutator(b1, rho)
        m3 = -0.5 * ot * _commutator(b2, rho)
    n_obs = ot.shape[0]
    stacked = [m1] + ([m2, m3] if m2 is not None else [])
    stacked = jnp.concatenate([m.astype(ctype) for m in stacked], axis=0)
    # d<O>/dt weights: a function of the primal alone, so kept out of the tangent-linear `stacked`
    # (one array mixing both made reverse mode over the times and another input fail to transpose).
    time_weights = (s.weights * (-1j * (e[:, None] - e[None, :]))).astype(ctype) if with_dt else None

    # ---- expensive set: dX(t) = W (dH~ o F(t)) C + U(t) dC + dt (-i H) X, plus the rho_s(0) term ----
    expensive = config.reservoir_entropies
    dfactor_eig = y0 = y0d = None
    if expensive:
        if not all(_is_zero(d) for d in dsqrt):
            dsq = tuple(_zero_if_symbolic(d, q) for d, q in zip(dsqrt, sqrt_eqs))
            # d(L (x) S) = L (x) dS.
            _, dsqrt_res = jax.jvp(lambda sq: _kron_all(list(sq)), (tuple(sqrt_eqs),), (dsq,))
            dfactor_eig = product_factor_to_eigenbasis(spectrum, s.system_factor, dsqrt_res)
        if not _is_zero(drho_system):
            # U (drho_s (x) sigma) U^dag = Z Y^dag with Y = U (1 (x) S), Z = U (drho_s (x) S), S S = sigma:
            # linear in drho_s even where the rank-truncated factor of rho_s(0) cannot follow it.
            sqrt_res = _kron_all(list(sqrt_eqs))
            y0 = product_factor_to_eigenbasis(spectrum, jnp.eye(d_s, dtype=drho_system.dtype), sqrt_res)
            y0d = product_factor_to_eigenbasis(spectrum, drho_system, sqrt_res)
    expensive_tangent = expensive and (dh_eig is not None or dfactor_eig is not None or with_dt or y0 is not None)
    # Everything real (real symmetric H and dH, real states): propagate real and imaginary parts
    # with real products, as the primal series does.
    split = expensive_tangent and not any(
        m is not None and jnp.iscomplexobj(m) for m in (w, s.factor_eig, dh_eig, dfactor_eig, y0, y0d))
    n_res = len(dims) - 1
    if split:
        if n_res == 1:
            w_rows, moved = system_last(w, dims)
            targets = [(moved, 0)]
        else:
            w_rows = w
            targets = [(dims, r + 1) for r in range(n_res)] + [((d_s, math.prod(dims[1:])), 1)]
        sinc_arg = (e[:, None] - e[None, :]) / (2 * jnp.pi)

    def split_entropy_tangents(t, dt):
        c = s.factor_eig
        cos, sin = jnp.cos(e * t)[:, None], jnp.sin(e * t)[:, None]
        x = (w_rows @ (cos * c), w_rows @ (-sin * c))
        # dX = W Y: every tangent term is collected in the eigenbasis, then two products with W.
        yr = yi = jnp.zeros_like(c)
        if dh_eig is not None:
            # W (dH~ o divided) C with divided_ac = -i t psi_a psi_c sinc((E_a - E_c) t / 2),
            # psi = exp(-i E t / 2): the sinc part is real, the phases scale rows.
            s_dh = dh_eig * jnp.sinc(sinc_arg * t)
            ch, sh = jnp.cos(e * t / 2)[:, None], jnp.sin(e * t / 2)[:, None]
            qr, qi = s_dh @ (ch * c), s_dh @ (-sh * c)
            yr = yr + t * (ch * qi - sh * qr)
            yi = yi - t * (ch * qr + sh * qi)
        if dfactor_eig is not None:
            yr, yi = yr + cos * dfactor_eig, yi - sin * dfactor_eig
        if with_dt:
            yr, yi = yr - dt * (e[:, None] * sin) * c, yi - dt * (e[:, None] * cos) * c
        dx = (w_rows @ yr, w_rows @ yi)
        if y0 is not None:
            y = (w_rows @ (cos * y0), w_rows @ (-sin * y0))
            z = (w_rows @ (cos * y0d), w_rows @ (-sin * y0d))
        out = []
        for target_dims, keep in targets:
            rows = lambda m: split_rows(m, target_dims, keep)  # noqa: E731
            xr, xi = rows(x[0]), rows(x[1])
            p = cross_split(rows(dx[0]), rows(dx[1]), xr, xi)
            d = p + p.conj().T
            if y0 is not None:
                d = d + cross_split(rows(z[0]), rows(z[1]), rows(y[0]), rows(y[1]))
            out.append(jax.jvp(von_neumann_entropy, (gram_split(xr, xi),), (d,))[1])
        result = {"reservoir_entropy": jnp.stack(out[:n_res])}
        if n_res > 1:
            result["joint_reservoir_entropy"] = out[n_res]
        return result

    # The tangent of the changes since t = 0 is computed as a change too (change_at): as the
    # difference of two tangents it cancelled like the values did (d Q / d beta was 96% off at
    # t = 1e-7). With sum_ab M_ab phi_a phi_b* = S + C(M): d changes = C(M1) + t (C(M2) + S2) + t^2 (C(M3) + S3).
    stacked_sums = jnp.sum(stacked, axis=(-2, -1))
    stacked_rows, stacked_cols = jnp.sum(stacked, axis=-1), jnp.sum(stacked, axis=-2)

    def tangent_at(t_dt):
        t, dt = t_dt
        cos, sin = jnp.cos(e * t), jnp.sin(e * t)
        parts = change_at(e, stacked, stacked_sums, stacked_rows, stacked_cols, t)
        dchanges = parts[:n_obs]
        if m2 is not None:
            dchanges = (dchanges + t * (parts[n_obs:2 * n_obs] + stacked_sums[n_obs:2 * n_obs])
                        + t**2 * (parts[2 * n_obs:3 * n_obs] + stacked_sums[2 * n_obs:3 * n_obs]))
        if with_dt:
            dchanges = dchanges + dt * expectation_at(e, time_weights, t)
        result = {"changes": dchanges}
        if not expensive_tangent:
            return result
        if split:
            result.update(split_entropy_tangents(t, dt))
            return result
        phi = jax.lax.complex(cos, -sin)
        w_phi = w * phi
        x = propagate_factor(spectrum, s.factor_eig, t)
        dx = jnp.zeros_like(x)
        if dh_eig is not None:
            mean = (e[:, None] + e[None, :]) * (t / 2)
            half_gap = (e[:, None] - e[None, :]) * (t / 2)
            # (phi_a - phi_c) / (E_a - E_c) = -i t exp(-i (E_a + E_c) t / 2) sinc((E_a - E_c) t / 2): no cancellation.
            divided = -1j * t * jnp.exp(-1j * mean) * jnp.sinc(half_gap / jnp.pi)
            dx = dx + w @ ((dh_eig * divided) @ s.factor_eig)
        if dfactor_eig is not None:
            dx = dx + w_phi @ dfactor_eig
        if with_dt:
            dx = dx + dt * ((w * (-1j * e * phi)) @ s.factor_eig)
        if y0 is not None:
            y, z = w_phi @ y0, w_phi @ y0d

        def entropy_tangent(rho_t, pair):
            d = pair(dx, x)
            d = d + d.conj().T
            if y0 is not None:
                d = d + pair(z, y)
            return jax.jvp(von_neumann_entropy, (rho_t,), (d,))[1]

        result["reservoir_entropy"] = jnp.stack([
            entropy_tangent(reduced_from_factor(x, dims, r + 1),
                            lambda a, b, r=r: _reduced_pair(a, b, dims, r + 1))
            for r in range(n_res)
        ])
        if n_res > 1:
            result["joint_reservoir_entropy"] = entropy_tangent(
                reservoirs_from_factor(x, d_s), lambda a, b: _reservoirs_pair(a, b, d_s))
        return result

    # Checkpointed per time chunk: reverse mode recomputes X(t) instead of storing it for every t.
    body = jax.checkpoint(tangent_at) if CHECKPOINT_TIME_CHUNKS else tangent_at
    series = jax.lax.map(body, (times, dtimes),
                         batch_size=_batch(times.shape[0], config.time_batch_size))

    dtotal = jnp.zeros_like(s.total_energy)
    if dh_eig is not None:
        dtotal = dtotal + jnp.real(jnp.sum(dh_eig * rho.T))
    if drho_eig is not None:
        dtotal = dtotal + jnp.sum(e * jnp.real(jnp.diagonal(drho_eig)))

    def expensive_out(name):
        primal = getattr(out, name)
        if primal is None:
            return None
        return series[name] if expensive_tangent else jnp.zeros_like(primal)

    dchanges = series["changes"].astype(out.values.dtype)
    # The t = 0 values sum_ab M_ab do not depend on the times: their tangent is that of M1.
    dinitial = stacked_sums[:n_obs].astype(out.values.dtype)
    tangent = Series(dinitial + dchanges, dchanges, dtotal,
                     expensive_out("reservoir_entropy"), expensive_out("joint_reservoir_entropy"))
    return out, tangent


spectral_series.defjvp(_spectral_series_jvp, symbolic_zeros=True)
