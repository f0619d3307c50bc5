"""Weak-coupling predictions for the spin-GORM model: reservoir spectrum, Redfield, shell master equation.

Derivations, the prefactor 1/8 of ``a(w)`` and the regimes of validity: ``docs/master_equation.md``.
Units hbar = k_B = 1. Each public function validates its arguments in Python, shapes and dtypes
always (they are static, so traced arguments too), values (finite, in range, Hermitian, density
matrices) when concrete, then calls a private ``jax.jit``-ed core: one compilation per argument
shapes and dtypes, none per new parameter value (op by op, redfield_prediction compiled ~60 tiny
XLA programs on its first call and took 3-11 ms a call). The cores are pure, so the functions
work under a user's ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._entropy import von_neumann_entropy
from ._evolve import check_times
from ._open_system import (InputError, _is_concrete, check_density_matrix, check_finite, check_matrix, check_overflow,
                           check_real_scalar, float_dtype, numeric)
from ._propagator_rules import _gibbs_weights
from .models._spin_gorm import SpinGORM

# <R_kl^2> = <X_kl^2> / (8 N) = 1 / (8 N) for the GOE of density exp(-Tr X^2 / 4), times the
# density of states N of the unit-width flat band (docs/master_equation.md, section 2).
SPECTRUM_PREFACTOR = 1.0 / 8.0


def _scalar(name: str, value, dtype=None) -> None:
    """A finite real scalar that stays finite in ``dtype`` (default: the float type it computes in)."""
    check_real_scalar(name, value)
    check_overflow(name, value, dtype or jnp.result_type(value, float))


def _positive(name: str, value, what: str) -> None:
    _scalar(name, value)
    if _is_concrete(value) and not float(np.asarray(value)) > 0.0:
        raise InputError(f"{name}={value!r} must be positive ({what}).")


def _check_prefactor(prefactor) -> None:
    _positive("prefactor", prefactor, "1/8 for qep_jax's GOE normalisation")


def _check_delta(delta) -> None:
    _scalar("delta", delta)
    if _is_concrete(delta) and not 0.0 < float(np.asarray(delta)) <= 1.0:
        raise InputError(f"delta={delta!r} must lie in (0, 1]: the spin splitting Delta, inside the unit band "
                         f"(beyond it both rates vanish).")


def _real_array(name: str, value):
    """``value`` (lists too) as a real numeric array, finite when concrete; the cores convert it with
    :func:`_as_float` (under jit, so that a JAX integer array costs no eager conversion)."""
    a = numeric(name, value, real=True)
    if _is_concrete(a):
        check_finite(name, a)
    return a


def _as_float(a) -> Array:
    """``a`` in the float (or complex) type it computes in: integers promote to JAX's default float."""
    return jnp.asarray(a, float_dtype(a))


def _forward_times(times, dtype=None) -> Array:
    """A time grid of ``t >= 0``: the predictions decay forward in time; at t = -1000 the Redfield
    population was -1.2e4 and the shell one -inf."""
    times = check_times(times, dtype)
    if _is_concrete(times) and np.any(np.asarray(times) < 0):
        raise InputError(f"times must be >= 0 (got {float(np.min(np.asarray(times))):g}); the master-equation "
                         f"predictions hold forward in time from the product state at t = 0.")
    return times


def _check_model(model) -> None:
    if not isinstance(model, SpinGORM):
        raise InputError(f"model must be a qep_jax.SpinGORM, got {type(model).__name__}.")
    if _is_concrete(model.delta) and not 0.0 < float(model.delta) <= 0.5:
        raise InputError(f"model.delta={float(model.delta)} must lie in (0, 1/2] for these predictions "
                         "(the shell formulas assume the spin fits twice into the unit band).")


def _band_pair(beta: Array, w: Array) -> tuple[Array, Array]:
    """``(F(w), e^{-b w} F(w))`` for ``0 <= w <= 1``: ``a(w)`` and ``a(-w)`` over the prefactor, overflow-free.

    ``F(w) = (e^{b/2} - e^{-b/2} e^{b w}) / (e^{b/2} - e^{-b/2})``. With ``c = |b|`` and
    ``R = expm1(-c (1 - w)) / expm1(-c)`` (every exponent <= 0) the pair is ``(R, e^{-c w} R)`` for
    ``b >= 0`` and ``(e^{-c w} R, R)`` for ``b < 0``: a negative temperature mirrors the spectrum.
    (The form ``(1 - e^{-b(1-w)}) / (1 - e^{-b})`` overflowed to 0 or NaN for ``b < -709``.) Near
    ``b = 0`` the Taylor form ``F = (1 - w)(1 + b w / 2) + O(b^2)`` keeps ``d/db`` right.
    """
    small = jnp.abs(beta) < 1e-8
    c = jnp.where(small, 1.0, jnp.abs(beta))
    ratio = jnp.expm1(-c * (1.0 - w)) / jnp.expm1(-c)
    boltzmann = jnp.exp(-c * w)
    positive = jnp.where(beta >= 0, ratio, boltzmann * ratio)
    negative = jnp.where(beta >= 0, boltzmann * ratio, ratio)
    taylor = (1.0 - w) * (1.0 + beta * w / 2)
    return jnp.where(small, taylor, positive), jnp.where(small, jnp.exp(-beta * w) * taylor, negative)


def reservoir_spectrum(frequencies, beta, *, prefactor=SPECTRUM_PREFACTOR) -> Array:
    """Continuum reservoir spectrum ``a(w) = sum_kl p_k <|R_kl|^2> delta(w - (e_l - e_k))`` of spin-GORM.

    ``a(w) = prefactor * F(w)`` for ``0 <= w <= 1``, ``a(-w) = e^{-beta w} a(w)``, zero for ``|w| > 1``,
    with ``F(w) = (e^{beta/2} - e^{-beta/2} e^{beta w}) / (e^{beta/2} - e^{-beta/2})`` (flat band of
    unit width, ``N -> infinity``). ``w`` is the energy absorbed by the reservoir; ``int a = prefactor``.

    Args:
        frequencies: ``(...)`` real, finite.
        beta: ``()`` finite inverse temperature of the reservoir (any sign).
        prefactor: ``1/8`` for :func:`qep_jax.goe`'s ``exp(-Tr X^2/4)`` (derived in
            ``docs/master_equation.md``); ``1/16`` is the ``exp(-Tr X^2/2)`` reading of the paper.

    Returns:
        ``(...)`` the spectral density (units of 1/energy).

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> a = qep_jax.reservoir_spectrum(jnp.array([0.1, -0.1]), 10.0)
        >>> bool(jnp.isclose(a[1], jnp.exp(-1.0) * a[0]))
        True
    """
    _check_prefactor(prefactor)
    w = _real_array("frequencies", frequencies)
    _scalar("beta", beta, float_dtype(w))
    return _spectrum(w, beta, prefactor)


@jax.jit
def _spectrum(frequencies, beta, prefactor) -> Array:
    w = _as_float(frequencies)
    beta = jnp.asarray(beta, dtype=w.dtype)
    magnitude = jnp.abs(w)
    inside = magnitude <= 1.0
    positive, negative = _band_pair(beta, jnp.clip(magnitude, 0.0, 1.0))
    return jnp.where(inside, prefactor * jnp.where(w >= 0, positive, negative), 0.0)


def reservoir_spectrum_lines(energies, coupling_matrix, beta) -> tuple[Array, Array]:
    """The discrete lines of ``a(w)`` for one sampled coupling: ``w_kl = e_l - e_k``, ``weight_kl = p_k |R_kl|^2``.

    ``a(w) = sum_kl weight_kl delta(w - w_kl)`` exactly, with ``p_k = e^{-beta e_k} / Z``. Detailed
    balance holds line by line: ``weight_lk = e^{-beta w_kl} weight_kl``.

    Args:
        energies: ``(N,)`` real reservoir levels ``e_k`` (eigenvalues of ``H_r``, which is diagonal).
        coupling_matrix: ``(N, N)`` Hermitian ``R`` in the eigenbasis of ``H_r``.
        beta: ``()`` finite inverse temperature.

    Returns:
        ``(frequencies, weights)``, both ``(N, N)``.

    Example:
        >>> import jax, jax.numpy as jnp, qep_jax
        >>> e = jnp.linspace(-0.5, 0.5, 4); r = qep_jax.goe(jax.random.key(0), 4) / jnp.sqrt(32.0)
        >>> w, weight = qep_jax.reservoir_spectrum_lines(e, r, 1.0)
        >>> w.shape
        (4, 4)
    """
    e, r = _check_lines(energies, coupling_matrix, beta)
    return _lines(e, r, beta)


def _check_lines(energies, coupling_matrix, beta):
    """The arguments of :func:`reservoir_spectrum_lines`, checked: ``(energies, coupling_matrix)``."""
    e = _real_array("energies", energies)
    if e.ndim != 1 or e.shape[0] == 0:  # a scalar raised IndexError
        raise InputError(f"energies has shape {e.shape}, expected (N,): the reservoir levels.")
    n = e.shape[0]
    r = numeric("coupling_matrix", coupling_matrix)
    if r.shape != (n, n):  # checked under jit too: the shapes are static
        raise InputError(f"coupling_matrix has shape {r.shape}, expected ({n}, {n}) = (N, N), N = len(energies).")
    r = check_matrix("coupling_matrix", r)
    _scalar("beta", beta, float_dtype(e))
    return e, r


@jax.jit
def _lines(energies, coupling_matrix, beta) -> tuple[Array, Array]:
    e = _as_float(energies)
    p = _gibbs_weights(e, beta)[0]
    return e[None, :] - e[:, None], p[:, None] * jnp.abs(coupling_matrix) ** 2


def reservoir_spectrum_sampled(frequencies, energies, coupling_matrix, beta, *, width, kernel="gaussian") -> Array:
    """``a(w)`` of one sampled ``R`` at finite N, smoothed: ``sum_kl p_k |R_kl|^2 K(w - (e_l - e_k))``.

    ``kernel="gaussian"``: ``K`` the normal density of standard deviation ``width``;
    ``kernel="box"``: ``K(x) = 1/width`` for ``|x| < width/2`` (a histogram with bins of ``width``
    centred on ``frequencies``). Both integrate to one, so ``int a = Tr(rho_r^eq R^2)``. Choose
    ``width`` several level spacings wide (``>~ 5 / (N - 1)``) so that each bin holds many lines.

    Args:
        frequencies: ``(F,)`` (or a scalar) where to evaluate.
        energies: ``(N,)`` reservoir levels.
        coupling_matrix: ``(N, N)`` Hermitian ``R`` in the eigenbasis of ``H_r``.
        beta: ``()`` finite inverse temperature.
        width: ``()`` positive kernel width (energy).
        kernel: ``"gaussian"`` or ``"box"`` (static).

    Returns:
        ``(F,)`` the smoothed spectrum.

    Example:
        >>> import jax, jax.numpy as jnp, qep_jax
        >>> n = 200; e = jnp.linspace(-0.5, 0.5, n)
        >>> r = qep_jax.goe(jax.random.key(0), n) / jnp.sqrt(8.0 * n)
        >>> a = qep_jax.reservoir_spectrum_sampled(jnp.array([0.1]), e, r, 1.0, width=0.05)
        >>> a.shape
        (1,)
    """
    if not isinstance(kernel, str) or kernel not in ("gaussian", "box"):
        raise InputError(f"kernel={kernel!r} must be 'gaussian' or 'box'.")
    _positive("width", width, "the kernel width, an energy several level spacings wide")
    e, r = _check_lines(energies, coupling_matrix, beta)
    w = _real_array("frequencies", frequencies)
    if w.ndim > 1:  # lax.map went over the rows and failed to broadcast
        raise InputError(f"frequencies has shape {w.shape}, expected (F,) or a scalar.")
    return _sampled(w, e, r, beta, width, kernel)


# width is traced: as a Python constant inside lax.map's body it recompiled for every new value.
@functools.partial(jax.jit, static_argnames=("kernel",))
def _sampled(frequencies, energies, coupling_matrix, beta, width, kernel: str) -> Array:
    lines, weights = _lines(energies, coupling_matrix, beta)
    lines, weights = lines.reshape(-1), weights.reshape(-1)
    w = jnp.atleast_1d(frequencies.astype(weights.dtype))

    def at(omega):  # one frequency at a time: memory O(N^2), not O(F N^2)
        x = omega - lines
        if kernel == "gaussian":
            k = jnp.exp(-0.5 * (x / width) ** 2) / (width * math.sqrt(2.0 * math.pi))
        else:
            k = jnp.where(jnp.abs(x) < width / 2, 1.0 / width, 0.0)
        return jnp.sum(weights * k)

    return jax.lax.map(at, w)


class RedfieldRates(NamedTuple):
    """Golden-rule rates of the spin (all ``()``): ``up = 2 pi lambda^2 a(-Delta)``,
    ``down = 2 pi lambda^2 a(Delta)``, ``relaxation = up + down`` (the paper's ``gamma``),
    ``sigma_z_eq = (up - down) / (up + down) = -tanh(beta Delta / 2)``."""

    up: Array
    down: Array
    relaxation: Array
    sigma_z_eq: Array


def redfield_rates(delta, coupling_strength, beta, *, prefactor=SPECTRUM_PREFACTOR) -> RedfieldRates:
    """Redfield (Born-Markov-secular) rates of spin-GORM, eqs. 30-33: ``w_up = 2 pi lambda^2 a(-Delta)``.

    Args:
        delta: ``()`` spin splitting ``Delta`` (``0 < Delta <= 1``).
        coupling_strength: ``()`` real ``lambda``.
        beta: ``()`` finite inverse temperature.
        prefactor: of :func:`reservoir_spectrum`.

    Returns:
        :class:`RedfieldRates`.

    Example:
        >>> import qep_jax
        >>> rates = qep_jax.redfield_rates(0.1, 0.1, 10.0)
        >>> round(float(rates.relaxation), 5)
        0.01074
    """
    _check_rates(delta, coupling_strength, beta, prefactor)
    return _rates(delta, coupling_strength, beta, prefactor)


def _check_rates(delta, coupling_strength, beta, prefactor) -> None:
    _check_delta(delta)
    _scalar("coupling_strength", coupling_strength)
    _scalar("beta", beta)
    _check_prefactor(prefactor)
    _scalar("beta", beta, jnp.result_type(delta, float))  # a(+-Delta) is computed in the type of delta


@jax.jit
def _rates(delta, coupling_strength, beta, prefactor) -> RedfieldRates:
    scale = 2.0 * jnp.pi * jnp.asarray(coupling_strength, dtype=jnp.result_type(coupling_strength, float)) ** 2
    a = _spectrum(jnp.stack([-jnp.asarray(delta), jnp.asarray(delta)]), beta, prefactor)
    up, down = scale * a[0], scale * a[1]
    # up / down = e^{-beta Delta} by detailed balance; written so it stays defined where both rates
    # vanish (Delta = 1, the band edge), which (up - down) / (up + down) is not.
    sigma_z_eq = -jnp.tanh(jnp.asarray(beta, up.dtype) * jnp.asarray(delta, up.dtype) / 2)
    return RedfieldRates(up, down, up + down, sigma_z_eq)


def redfield_state(times, delta, coupling_strength, beta, rho_system0, *, prefactor=SPECTRUM_PREFACTOR) -> Array:
    """Secular Redfield solution ``rho_s(t)`` of spin-GORM (basis: index 0 the lower level).

    Populations: ``p_up(t) = p_eq + (p_up(0) - p_eq) e^{-gamma t}`` with ``p_eq = w_up / gamma``;
    coherence: ``rho_10(t) = rho_10(0) e^{-(gamma/2 + i Delta) t}`` (``sigma_x`` coupling gives no pure
    dephasing; the Lamb shift is neglected).

    Args:
        times: ``(T,)``, ``t >= 0``.
        delta, coupling_strength, beta: ``()`` model parameters, as in :func:`redfield_rates`.
        rho_system0: ``(2, 2)`` initial spin state (a density matrix).
        prefactor: of :func:`reservoir_spectrum`.

    Returns:
        ``(T, 2, 2)`` complex (also for a diagonal ``rho_system0``, so that jit and eager agree).

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> rho = qep_jax.redfield_state(jnp.array([0.0, 1e4]), 0.1, 0.1, 10.0, jnp.diag(jnp.array([1.0, 0.0])))
        >>> round(float(rho[-1, 1, 1].real), 4)  # 1 / (1 + e^{beta Delta})
        0.2689
    """
    times = _forward_times(times)
    rho0 = numeric("rho_system0", rho_system0)
    if rho0.shape != (2, 2):  # under jit too: a traced 3 x 3 state was read as its top-left corner
        raise InputError(f"rho_system0 has shape {rho0.shape}, expected (2, 2).")
    if _is_concrete(rho0):
        check_finite("rho_system0", rho0)
        check_density_matrix("rho_system0", rho0)
    _check_rates(delta, coupling_strength, beta, prefactor)
    return _redfield_state(times, delta, coupling_strength, beta, rho0, prefactor)


@jax.jit
def _redfield_state(times, delta, coupling_strength, beta, rho_system0, prefactor) -> Array:
    rho0 = _as_float(rho_system0)
    rates = _rates(delta, coupling_strength, beta, prefactor)
    p_eq = (1 + rates.sigma_z_eq) / 2  # = up / (up + down), also where both rates vanish
    decay = jnp.exp(-rates.relaxation * times)
    p_up = p_eq + (jnp.real(rho0[1, 1]) - p_eq) * decay
    # Always complex: a real coherence rotates into a complex one, and the output type must not
    # depend on values (under jit they are unknown).
    coherence = rho0[1, 0] * jnp.exp(-(rates.relaxation / 2 + 1j * delta) * times)
    return jnp.stack([jnp.stack([1 - p_up + 0j, jnp.conj(coherence)], -1),
                      jnp.stack([coherence, p_up + 0j], -1)], -2)


def open_entropy_production(system_states, h_system, beta, initial_state) -> Array:
    """Eq. 25 from a system state alone: ``D_iS'(t) = D[rho_s(0)||rho_s^eq] - D[rho_s(t)||rho_s^eq]``.

    Evaluated as ``S(t) - S(0) - beta (Tr H_s rho_s(t) - Tr H_s rho_s(0))`` (the ``ln Z_s`` cancel),
    with ``rho_s^eq = e^{-beta H_s} / Z_s``.

    Args:
        system_states: ``(..., d, d)`` density matrices ``rho_s(t)``.
        h_system: ``(d, d)`` Hermitian ``H_s``.
        beta: ``()`` finite inverse temperature.
        initial_state: ``(d, d)`` density matrix ``rho_s(0)``, or ``(..., d, d)`` one per state
            (the batch shapes must broadcast).

    Returns:
        ``(...)`` in nats (the broadcast batch shape).

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> h = jnp.diag(jnp.array([-0.05, 0.05])); rho0 = jnp.diag(jnp.array([1.0, 0.0]))
        >>> float(qep_jax.open_entropy_production(rho0, h, 10.0, rho0))
        0.0
    """
    rho = _density_matrices("system_states", system_states)
    d = rho.shape[-1]
    rho0 = _density_matrices("initial_state", initial_state, d)
    try:
        np.broadcast_shapes(rho.shape[:-2], rho0.shape[:-2])
    except ValueError:
        raise InputError(f"system_states has batch shape {rho.shape[:-2]} and initial_state {rho0.shape[:-2]}, which "
                         f"do not broadcast; give one initial_state or one per state.") from None
    h = check_matrix("h_system", h_system, d)
    _scalar("beta", beta)
    return _open_entropy_production(rho, h, beta, rho0)


@jax.jit
def _open_entropy_production(rho, h, beta, rho0) -> Array:
    rho, rho0 = _as_float(rho), _as_float(rho0)
    dtype = jnp.result_type(rho.dtype, rho0.dtype, float_dtype(h))
    rho, rho0, h = (jnp.asarray(x, dtype) for x in (rho, rho0, h))
    # Tr H rho over the last two axes of each: jnp.trace(h @ rho0) traced over the batch axes.
    energy = jnp.real(jnp.einsum("ij,...ji->...", h, rho))
    energy0 = jnp.real(jnp.einsum("ij,...ji->...", h, rho0))
    return von_neumann_entropy(rho) - von_neumann_entropy(rho0) - beta * (energy - energy0)


def _density_matrices(name: str, value, dim: int | None = None) -> Array:
    """``(..., d, d)`` numbers (``d = dim`` if given); density matrices when concrete. Not converted:
    the core does that under jit."""
    a = numeric(name, value)
    if (a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] == 0
            or (dim is not None and a.shape[-1] != dim)):
        size = "d" if dim is None else dim
        raise InputError(f"{name} has shape {a.shape}, expected (..., {size}, {size}) density matrices.")
    if _is_concrete(a):
        check_finite(name, a)
        check_density_matrix(name, a)
    return a


class MasterEquationPrediction(NamedTuple):
    """A weak-coupling prediction for spin-GORM started in ``|0><0|`` (shapes ``(T,)`` unless noted).

    Fields:
        times: ``(T,)``.
        system_state: ``(T, 2, 2)`` predicted ``rho_s(t)`` (diagonal).
        excited_population: ``p_up(t) = rho_s(t)[1, 1]``.
        sigma_z: ``<sigma_z>_t = 2 p_up - 1``.
        system_entropy: ``S(t)`` of the predicted state.
        heat: ``Q(t) = Delta p_up(t)``, heat into the system (energy conservation with ``<V>`` neglected).
        entropy_flow: ``beta Q``.
        entropy_production_open: eq. 25 of the predicted state, ``S(t) - beta Delta p_up(t)``.
        entropy_production: eq. 10 via the balance ``dS - beta Q``; equals the previous field
            because the weak-coupling predictions set ``<V>_t = 0`` (eq. 27).
        reservoir_relative_entropy: ``D[rho_r(t)||rho_r^eq]`` (shell prediction only, else ``None``).
        mutual_information: ``entropy_production - reservoir_relative_entropy`` (shell only, else ``None``).
    """

    times: Array
    system_state: Array
    excited_population: Array
    sigma_z: Array
    system_entropy: Array
    heat: Array
    entropy_flow: Array
    entropy_production_open: Array
    entropy_production: Array
    reservoir_relative_entropy: Array | None = None
    mutual_information: Array | None = None


def _prediction(model: SpinGORM, times: Array, p_up: Array, displacement=None) -> MasterEquationPrediction:
    zeros = jnp.zeros_like(p_up)
    rho = jnp.stack([jnp.stack([1 - p_up, zeros], -1), jnp.stack([zeros, p_up], -1)], -2)
    entropy = von_neumann_entropy(rho)  # S(0) = 0 for |0><0|
    heat = model.delta * p_up
    flow = model.beta * heat
    production = entropy - flow
    mutual = None if displacement is None else production - displacement
    return MasterEquationPrediction(times, rho, p_up, 2 * p_up - 1, entropy, heat, flow, production,
                                    production, displacement, mutual)


def redfield_prediction(model: SpinGORM, times, *, prefactor=SPECTRUM_PREFACTOR) -> MasterEquationPrediction:
    """Redfield prediction ``<sigma_z>_t = <sigma_z>_eq + (-1 - <sigma_z>_eq) e^{-gamma t}`` and its entropies.

    Canonical reservoir of infinite heat capacity: ``p_up -> 1 / (1 + e^{beta Delta})``.
    The reservoir state is not predicted (those fields are ``None``).

    Args:
        model: :class:`qep_jax.SpinGORM` (its ``n_levels`` is not used: ``N -> infinity``).
        times: ``(T,)``, ``t >= 0``.
        prefactor: of :func:`reservoir_spectrum`.

    Returns:
        :class:`MasterEquationPrediction`.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> model = qep_jax.SpinGORM(n_levels=100, delta=0.1, coupling_strength=0.1, beta=10.0)
        >>> pred = qep_jax.redfield_prediction(model, jnp.linspace(0.0, 300.0, 4))
        >>> pred.sigma_z.shape
        (4,)
    """
    _check_model(model)
    times = _forward_times(times)
    _check_rates(model.delta, model.coupling_strength, model.beta, prefactor)
    return _redfield_prediction(model, times, prefactor)


@jax.jit
def _redfield_prediction(model: SpinGORM, times, prefactor) -> MasterEquationPrediction:
    rates = _rates(model.delta, model.coupling_strength, model.beta, prefactor)
    p_eq = (1 + rates.sigma_z_eq) / 2  # = up / (up + down), also where both rates vanish
    p_up = p_eq * (-jnp.expm1(-rates.relaxation * times))
    return _prediction(model, times, p_up)


def shell_pair_probability(model: SpinGORM) -> Array:
    """``P_pair = sum_{k: e_k >= -1/2 + Delta} p_k``: weight of reservoir levels that can give ``Delta`` to the spin.

    Args:
        model: :class:`qep_jax.SpinGORM` (uses its ``N`` discrete levels).

    Returns:
        ``()``; its ``N -> infinity`` limit is ``e^{-beta Delta} F(Delta)``.

    Example:
        >>> import qep_jax
        >>> model = qep_jax.SpinGORM(n_levels=101, delta=0.1, coupling_strength=0.1, beta=10.0)
        >>> round(float(qep_jax.shell_pair_probability(model)), 4)
        0.3679
    """
    _check_model(model)
    return _shell_pair_probability(model)


def _region_tolerance(model: SpinGORM, energies: Array) -> float:
    """How far a level may sit on the wrong side of a region boundary (``-1/2 + Delta``,
    ``1/2 - Delta``) and still count as on it: 1e-9 spacings, and at least 16 eps of the energies'
    dtype (in float32 1e-9 spacings was below rounding, and a level on the boundary at N = 25,
    Delta = 1/2 fell on either side: shell_prediction 0.4555 or 0.4036)."""
    return max(1e-9 / (model.n_levels - 1), 16 * float(jnp.finfo(energies.dtype).eps))


@jax.jit  # a pytree: n_levels is static, delta, coupling_strength and beta traced
def _shell_pair_probability(model: SpinGORM) -> Array:
    e = model.reservoir_energies()
    p = _gibbs_weights(e, model.beta)[0]
    # A level exactly at -1/2 + Delta counts despite rounding.
    return jnp.sum(jnp.where(e >= -0.5 + model.delta - _region_tolerance(model, e), p, 0.0))


def shell_prediction(model: SpinGORM, times, *, prefactor=SPECTRUM_PREFACTOR) -> MasterEquationPrediction:
    """Finite-environment (Esposito-Gaspard) prediction ``p_up(t) = P_pair (1 - e^{-2 w t}) / 2``, ``w = 2 pi lambda^2 prefactor``.

    Each shell ``{|0, E>, |1, E - Delta>}`` equilibrates to equal populations (microcanonical, not
    canonical: the flat band has finite heat capacity). From the predicted populations of spin and
    reservoir, taking the reservoir state diagonal with density ``q(e)``
    (``q/p = 1 + f c`` on ``[-1/2, -1/2+Delta)``, ``1 - f + f c`` in the middle, ``1 - f`` on
    ``(1/2-Delta, 1/2]``, ``f = p_up / P_pair``, ``c = P_pair / P(e < 1/2 - Delta)``, which conserves
    probability on the discrete levels and tends to ``e^{-beta Delta}``), this also gives the reservoir
    displacement ``D[rho_r||rho_r^eq] = sum_regions P_region g(q/p)``, ``g(x) = x ln x``, and the mutual
    information ``D_iS - displacement``. Neither is a bound on the exact ensemble value: the exact
    ``rho_r`` keeps coherences inside each decay window and its populations are not the shell's. Measured
    (``experiments/where_entropy_lives.py``, N = 25-100), the shell's displacement stayed below the exact one
    at every time, while its mutual information was below the exact one early (t < ~20) and above it later,
    and below it at every time at stronger coupling. It does not predict coherences, ``<V>_t``, or anything
    of a single realization.

    Args:
        model: :class:`qep_jax.SpinGORM` (region weights summed over its ``N`` levels).
        times: ``(T,)``, ``t >= 0``.
        prefactor: of :func:`reservoir_spectrum`.

    Returns:
        :class:`MasterEquationPrediction` with every field.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> model = qep_jax.SpinGORM(n_levels=101, delta=0.1, coupling_strength=0.3, beta=10.0)
        >>> pred = qep_jax.shell_prediction(model, jnp.array([0.0, 1e4]))
        >>> round(float(pred.excited_population[-1]), 4)  # P_pair / 2
        0.1839
    """
    _check_model(model)
    _check_prefactor(prefactor)
    times = _forward_times(times)
    return _shell_prediction(model, times, prefactor)


@jax.jit
def _shell_prediction(model: SpinGORM, times, prefactor) -> MasterEquationPrediction:
    rate = 2.0 * jnp.pi * model.coupling_strength**2 * prefactor
    pair = _shell_pair_probability(model)
    filling = -jnp.expm1(-2.0 * rate * times) / 2  # f(t): fraction of each shell's weight moved up
    p_up = pair * filling

    e = model.reservoir_energies()
    p = _gibbs_weights(e, model.beta)[0]
    tol = _region_tolerance(model, e)
    low = jnp.sum(jnp.where(e < -0.5 + model.delta - tol, p, 0.0))
    high = jnp.sum(jnp.where(e > 0.5 - model.delta + tol, p, 0.0))
    middle = 1.0 - low - high
    # Weight gained per unit p by the receiving levels (e < 1/2 - Delta): all that the giving levels
    # lose, f P_pair, spread over them; -> e^{-beta Delta} as N -> infinity, and it keeps q normalised
    # also when Delta is not a multiple of the level spacing (e^{-beta Delta} missed by 2e-3 at N = 100).
    boltzmann = pair / (1.0 - high)

    def xlogx(x):
        return jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, x, 1.0)), 0.0)

    displacement = (low * xlogx(1 + filling * boltzmann) + middle * xlogx(1 - filling + filling * boltzmann)
                    + high * xlogx(1 - filling))
    return _prediction(model, times, p_up, displacement)
