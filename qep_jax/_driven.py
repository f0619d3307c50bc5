"""Driven open systems: work, heat, free energy and entropy production under a protocol (physics.md §3).

``H(t) = H_base + sum_j u_j(t) G_j`` where ``H_base`` is ``open_system.hamiltonian()``, the first
``n_s`` drives act on the system (``G_j = A_j (x) 1``, part of ``H_s(t)``) and the others are
full ``D x D`` coupling operators (part of ``V(t)``). Reservoirs, ``beta`` and the initial product
state ``rho_s(0) (x) rho_r^eq`` come from the :class:`OpenSystem`.

The state is carried as a factor ``X`` (``D x R``, ``rho = X X^dag``, ``R = rank(rho_s(0)) d_r``)
through the steps; only ``rho_s(t)`` and a few expectation values are recorded, so memory is
``O(D R)`` plus ``O(T d_s^2)`` for the series (reverse-mode gradients also store one step's
residuals per step, or recompute them with ``checkpoint=True``).

* :class:`~qep_jax.protocols.PiecewiseConstant`: exact, one ``eigh`` per step,
  ``X <- W diag(exp(-i E dt)) W^dag X``. Work is the sum of jumps ``<H_{k} - H_{k-1}>`` at the
  switching times.
* smooth protocols (:class:`~qep_jax.protocols.FourierRamp`): the fourth-order commutator-free
  Magnus integrator (two Gauss nodes, two Hermitian exponentials per step); its order is measured
  in ``tests/test_driven.py``. The work integral ``int Tr[dH/dt rho]`` uses a fourth-order
  quadrature of the power at the grid points.

Every exponential is differentiated with the Daleckii-Krein formula (divided differences
``(e^{-iE_a dt} - e^{-iE_b dt})/(E_a - E_b)`` written with ``sinc``), exact at degenerate levels.
Derivatives with respect to ``rho_s(0)`` use the linearity of the recorded observables in ``rho(0)``
(:func:`_linear_series`), finite at pure and degenerate ``rho_s(0)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import weakref
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.custom_derivatives import SymbolicZero

from . import _linalg

from ._entropy import von_neumann_entropy
from ._evolve import _equilibrium, _static_rank, warn_if_float32, with_value
from ._open_system import (InputError, OpenSystem, _as_matrix_tuple, _is_concrete, _kron_all, check_count, check_flag,
                           check_finite, check_matrix, check_real_scalar, is_int, numeric)
from ._propagator_rules import _zero_if_symbolic, apply_on_factor, system_factor
from .protocols import FourierRamp, PiecewiseConstant

# Fourth-order commutator-free Magnus (two Gauss-Legendre nodes c_1 < c_2):
# U(h) ~ exp(-i h (A1 H1 + A2 H2)) exp(-i h (A2 H1 + A1 H2)), applied right factor first.
_GAUSS_NODES = (0.5 - math.sqrt(3.0) / 6.0, 0.5 + math.sqrt(3.0) / 6.0)
_CF4_A1 = (3.0 - 2.0 * math.sqrt(3.0)) / 12.0
_CF4_A2 = (3.0 + 2.0 * math.sqrt(3.0)) / 12.0


@dataclasses.dataclass(frozen=True)
class DrivenTrajectory:
    """Energetics of a driven open system on the recorded time grid (``hbar = k_B = 1``, K = 1 reservoir).

    ``T`` recorded times: the ``M + 1`` switching times of a piecewise-constant protocol, or the
    ``n_steps + 1`` grid points of a smooth one. Batched runs prepend a realization axis.

    Not the same quantities as :class:`~qep_jax.Trajectory` (``evolve``) under the same names:
    here ``system_energy`` is ``U = <H_s(t) + V(t)>_t``, **interaction included** (``Trajectory``'s
    is ``<H_s>_t``, its ``<V>_t`` being ``interaction_energy``; on one undriven system they differ by
    ``<V>``), because the first law ``dU = W + Q`` and ``dF = dU - T dS`` (eq. 24) use that ``U``.
    ``heat`` and ``reservoir_energy`` are ``(T,)`` here (one reservoir), ``(T, K)`` in ``Trajectory``.
    Undriven, ``drive.system_energy = evolve.system_energy + evolve.interaction_energy`` and
    ``drive.heat = evolve.heat[:, 0]`` (tested).

    Fields:
        times: ``(T,)``.
        controls: ``(T, n_controls)`` ``u(t)`` in force at each recorded time (after the jump).
        system_state: ``(T, d_s, d_s)`` ``rho_s(t)``.
        system_entropy: ``(T,)`` ``S(t) = -Tr rho_s ln rho_s``.
        energy: ``(T,)`` ``<H(t)>_t`` (total).
        system_energy: ``(T,)`` ``U(t) = <H_s(t) + V(t)>_t`` (includes the interaction; ``evolve``'s
            ``system_energy`` excludes it).
        reservoir_energy: ``(T,)`` ``<H_r>_t`` (``(T, K)`` in ``Trajectory``).
        work: ``(T,)`` ``W(t) = <H(t)>_t - <H(0)>_0``.
        work_integral: ``(T,)`` ``int_0^t Tr[(dH_s/ds + dV/ds) rho(s)] ds``: the sum of jumps
            ``Tr[(H_k - H_{k-1}) rho(t_k)]`` (piecewise constant) or a fourth-order quadrature of
            the power on the grid (smooth).
        heat: ``(T,)`` ``Q(t) = <H_r>_0 - <H_r>_t`` (into the system; ``(T, K)`` in ``Trajectory``).
            A difference of two expectation values: in float32 its absolute error is about
            ``eps |<H_r>|``, which ``entropy_production`` multiplies by ``beta`` (docs/driven.md).
        entropy_flow: ``(T,)`` ``beta Q``.
        entropy_production: ``(T,)`` ``D_iS = D[rho(t) || rho_s(t) (x) rho_r^eq]`` (eq. 10, closed form
            of ``ln rho_r^eq``).
        entropy_production_balance: ``(T,)`` ``dS - beta Q`` (eq. 7).
        free_energy_change: ``(T,)`` ``dF = dU - T dS`` (non-equilibrium free energy at the reservoir
            temperature ``T = 1/beta``).
        dissipated_work: ``(T,)`` ``W - dF``; equals ``T D_iS >= 0`` (eq. 24).
    """

    times: Array
    controls: Array
    system_state: Array
    system_entropy: Array
    energy: Array
    system_energy: Array
    reservoir_energy: Array
    work: Array
    work_integral: Array
    heat: Array
    entropy_flow: Array
    entropy_production: Array
    entropy_production_balance: Array
    free_energy_change: Array
    dissipated_work: Array

    def fields(self) -> dict[str, Array]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


jax.tree_util.register_dataclass(
    DrivenTrajectory, data_fields=[f.name for f in dataclasses.fields(DrivenTrajectory)], meta_fields=[]
)


# --------------------------------------------------------------------------------------------
# Propagator exp(-i h dt) with a degeneracy-safe derivative.


@jax.custom_jvp
def hermitian_propagator(h: Array, dt: Array) -> Array:
    """``exp(-i h dt)`` for Hermitian ``h`` ``(D, D)`` via one ``eigh``; returns complex ``(D, D)``."""
    energies, vectors = _linalg.eigh(h)
    return (vectors * jnp.exp(-1j * energies * dt)) @ vectors.conj().T


@hermitian_propagator.defjvp
def _hermitian_propagator_jvp(primals, tangents):
    h, dt = primals
    dh, ddt = tangents
    energies, vectors = _linalg.eigh(h)
    phases = jnp.exp(-1j * energies * dt)
    value = (vectors * phases) @ vectors.conj().T
    # Divided difference (phi_a - phi_b)/(E_a - E_b) = -i dt e^{-i dt (E_a+E_b)/2} sinc(dt (E_a-E_b)/2):
    # finite and exact at E_a = E_b, where eigh's own derivative would divide by zero.
    half_sum = (energies[:, None] + energies[None, :]) / 2
    x = dt * (energies[:, None] - energies[None, :]) / 2
    divided = -1j * dt * jnp.exp(-1j * dt * half_sum) * jnp.sinc(x / jnp.pi)
    # The primal depends on the Hermitian part of h only (eigh symmetrizes), so its derivative is
    # that of dh's Hermitian part: an anti-Hermitian direction changes nothing, and a gradient with
    # respect to a Hermitian input comes out Hermitian.
    dh_eig = _linalg.adjoint(vectors) @ _linalg.hermitian_part(dh) @ vectors
    d_value = vectors @ (divided * dh_eig) @ vectors.conj().T
    # d/d(dt) = -i h U with the same Hermitian h the primal used.
    d_value = d_value - 1j * ddt * ((vectors * (energies * phases)) @ vectors.conj().T)
    return value, d_value


# --------------------------------------------------------------------------------------------
# Single-realization kernels.


class _Drives(NamedTuple):
    system: Array  # (n_s, d_s, d_s)
    coupling: Array  # (n_v, D, D)


def _embedded_drives(system: OpenSystem, drives: _Drives) -> Array:
    """All drive operators on the full space, ``(n_controls, D, D)``; ``(0, D, D)`` for an undriven run
    (``jnp.stack`` of no operators had raised a ValueError inside jit)."""
    mats = [system.embed(a, 0) for a in drives.system] + list(drives.coupling)
    if not mats:
        return jnp.zeros((0, system.total_dim, system.total_dim), jnp.result_type(drives.coupling, system.coupling))
    return jnp.stack(mats)


class _Series(NamedTuple):
    """What a propagation records, ``T`` times: every entry is linear in ``rho(0)`` for a fixed protocol."""

    system_state: Array  # (T, d_s, d_s) rho_s(t)
    reservoir_energy: Array  # (T,) <H_r>_t
    energy: Array  # (T,) <H(t)>_t
    drive_expectations: Array  # (T, n_controls) <G_j>_t


def _observe(system: OpenSystem, drives: _Drives, h: Array, x: Array, y: Array) -> _Series:
    """``rho_s``, ``<H_r>``, ``<H>`` and ``<G_j>`` of ``rho = X Y^dag`` (Hermitian); ``X, Y`` are ``(D, R)``.

    ``Y = X`` is the state itself; a different ``Y`` carries a tangent of ``rho_s(0)`` (see
    :func:`_linear_series`). ``Re Tr[O X Y^dag] = Tr[O rho]`` for Hermitian ``O`` and ``rho``.
    """
    dims = system.dims
    xt = x.reshape(dims[0], -1, x.shape[-1])
    yt = y.reshape(dims[0], -1, y.shape[-1])
    rho_s = _linalg.hermitian_part(jnp.einsum("arn,brn->ab", xt, yt.conj()))
    reservoir_energy = jnp.real(jnp.vdot(y, apply_on_factor(system.h_reservoirs[0], x, dims, 1)))
    energy = jnp.real(jnp.vdot(y, h @ x))
    g_sys = jnp.real(jnp.einsum("jab,ba->j", drives.system, rho_s))
    g_cpl = jnp.real(jnp.einsum("dr,jde,er->j", y.conj(), drives.coupling, x))
    return _Series(rho_s, reservoir_energy, energy, jnp.concatenate([g_sys, g_cpl]))


def _propagate_factors(step_hamiltonians, system, drives, factors, scan_inputs, final_h, *, checkpoint):
    """Carry ``factors = (X,)`` (``rho = X X^dag``) or ``(X, Y)`` (``X Y^dag``) through the steps.

    ``step_hamiltonians(input) -> (H at the record, [(H_k, dt_k) exponentials applied in order])``.
    Returns the :class:`_Series` at every step start and at the end (``final_h``).
    """

    def observe(h, fs):
        return _observe(system, drives, h, fs[0], fs[-1])

    def step(fs, inputs):
        h_record, exponentials = step_hamiltonians(inputs)
        obs = observe(h_record, fs)
        for h, dt in exponentials:
            u = hermitian_propagator(h, dt)
            fs = tuple(u @ f for f in fs)
        return fs, obs

    if checkpoint:
        step = jax.checkpoint(step)
    fs_final, series = jax.lax.scan(step, factors, scan_inputs)
    final = observe(final_h, fs_final)
    return _Series(*(jnp.concatenate([a, b[None]]) for a, b in zip(series, final)))


def _initial_factor(system: OpenSystem, rho_system: Array, rank: int) -> Array:
    """``X0 = L (x) sqrt(rho_r^eq)``, ``L L^dag = rho_s(0)`` of rank ``rank``: ``(D, rank d_r)`` complex."""
    eq = _equilibrium(system, 0)
    factor = _kron_all([system_factor(rho_system, rank), eq.sqrt_rho])
    return factor.astype(jnp.result_type(factor, jnp.complex64))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _linear_series(propagate, rank, rho_system, system, drives, protocol) -> _Series:
    """``propagate(system, drives, protocol, (X0,))`` with ``X0`` built from ``rho_s(0)``.

    The primal keeps the rank-``r`` factor (cost ``O(D^2 r d_r)`` per step). The factor is an eigh
    and a square root of ``rho_s(0)``, whose derivatives are infinite at pure or degenerate states
    (``|0><0|``, ``I/2``); the rule below never differentiates them: every recorded quantity is linear
    in ``rho(0) = rho_s(0) (x) rho_r^eq``, so its derivative along ``d rho_s`` is the same propagation
    of ``d rho_s (x) rho_r^eq = X Y^dag`` with ``X = d rho_s (x) S``, ``Y = 1 (x) S``, ``S = sqrt(rho_r^eq)``.
    """
    return propagate(system, drives, protocol, (_initial_factor(system, rho_system, rank),))


def _linear_series_jvp(propagate, rank, primals, tangents):
    rho_system, system, drives, protocol = primals
    drho, dsystem, ddrives, dprotocol = tangents

    def at_fixed_initial_state(system, drives, protocol):
        # rho_system is a constant here: its eigh and square root are not differentiated.
        return propagate(system, drives, protocol, (_initial_factor(system, rho_system, rank),))

    rest = (system, drives, protocol)
    drest = jax.tree_util.tree_map(_zero_if_symbolic, (dsystem, ddrives, dprotocol), rest,
                                   is_leaf=lambda t: isinstance(t, SymbolicZero))
    series, dseries = jax.jvp(at_fixed_initial_state, rest, drest)
    if isinstance(drho, SymbolicZero):
        return series, dseries
    # Linear in drho (so jax.grad transposes it); its Hermitian part, as the primal's eigh sees.
    sqrt_eq = _equilibrium(system, 0).sqrt_rho
    eye = jnp.eye(rho_system.shape[-1], dtype=sqrt_eq.dtype)
    dtype = jnp.result_type(sqrt_eq, drho, jnp.complex64)
    x = jnp.kron(_linalg.hermitian_part(drho), sqrt_eq).astype(dtype)
    y = jnp.kron(eye, sqrt_eq).astype(dtype)
    from_state = propagate(system, drives, protocol, (x, y))
    return series, jax.tree_util.tree_map(jnp.add, dseries, from_state)


_linear_series.defjvp(_linear_series_jvp, symbolic_zeros=True)


def _piecewise_kernel(system, drives, protocol: PiecewiseConstant, *, rank: int, checkpoint: bool):
    def propagate(system, drives, protocol, factors):
        generators = _embedded_drives(system, drives)
        h_base = system.hamiltonian()

        def step_hamiltonians(inputs):
            u, dt = inputs
            h = h_base + jnp.tensordot(u, generators, axes=1)
            return h, [(h, dt)]

        h_final = h_base + jnp.tensordot(protocol.values[-1], generators, axes=1)
        return _propagate_factors(step_hamiltonians, system, drives, factors, (protocol.values, protocol.durations),
                                  h_final, checkpoint=checkpoint)

    series = _linear_series(propagate, rank, system.rho_system, system, drives, protocol)
    controls = jnp.concatenate([protocol.values, protocol.values[-1:]])
    # Jump at t_k: (u_k - u_{k-1}) . <G>_{t_k}; none at t_0 (state prepared with H(u_0)) nor at t_M.
    previous = jnp.concatenate([controls[:1], controls[:-1]])
    work_integral = jnp.cumsum(jnp.sum((controls - previous) * series.drive_expectations, axis=-1))
    return _thermodynamics(system, protocol.switching_times(), controls, series, work_integral)


def _cumulative_quadrature(power: Array, h: Array) -> Array:
    """``int_0^{t_n} P`` on a uniform grid, ``(n + 1,) -> (n + 1,)``; local cubic interpolation, global error ``O(h^4)``."""
    inner = h * (-power[:-3] + 13 * power[1:-2] + 13 * power[2:-1] - power[3:]) / 24
    first = h * (9 * power[0] + 19 * power[1] - 5 * power[2] + power[3]) / 24
    last = h * (9 * power[-1] + 19 * power[-2] - 5 * power[-3] + power[-4]) / 24
    pieces = jnp.concatenate([first[None], inner, last[None]])
    return jnp.concatenate([jnp.zeros((1,), power.dtype), jnp.cumsum(pieces)])


class _SmoothSamples(NamedTuple):
    """A smooth protocol as the propagation reads it: controls at the step starts and Gauss nodes."""

    at_start: Array  # (n_steps, n_controls) u(t_n)
    at_nodes: Array  # (n_steps, 2, n_controls) u(t_n + c_i h)
    final: Array  # (n_controls,) u(duration)
    h: Array  # () step


def _smooth_kernel(system, drives, protocol, *, n_steps: int, rank: int, checkpoint: bool):
    """``protocol`` is a pytree of arrays (differentiable) or a plain object (its parameters constants).

    It is sampled here, outside :func:`_linear_series`, which receives only the arrays
    :class:`_SmoothSamples`: its JVP rule is traced lazily (when a cached jaxpr is differentiated
    later), and a rule that closed over a plain protocol kept that object alive in JAX's caches.
    """
    real = jnp.finfo(system.coupling.dtype).dtype
    duration = jnp.asarray(protocol.duration, real)
    h = duration / n_steps
    times = jnp.arange(n_steps + 1, dtype=real) * h

    def values(t):
        return jnp.asarray(protocol.values(t), real)

    nodes = times[:-1, None] + jnp.asarray(_GAUSS_NODES, real) * h
    # u at the exact final time (not n_steps * h, which may round differently).
    samples = _SmoothSamples(jax.vmap(values)(times[:-1]), jax.vmap(jax.vmap(values))(nodes), values(duration), h)

    def propagate(system, drives, samples, factors):
        generators = _embedded_drives(system, drives)
        h_base = system.hamiltonian()

        def hamiltonian(u):
            return h_base + jnp.tensordot(u, generators, axes=1)

        def step_hamiltonians(inputs):
            u_start, u_nodes = inputs
            h1, h2 = hamiltonian(u_nodes[0]), hamiltonian(u_nodes[1])
            return hamiltonian(u_start), [(_CF4_A2 * h1 + _CF4_A1 * h2, samples.h),
                                          (_CF4_A1 * h1 + _CF4_A2 * h2, samples.h)]

        return _propagate_factors(step_hamiltonians, system, drives, factors, (samples.at_start, samples.at_nodes),
                                  hamiltonian(samples.final), checkpoint=checkpoint)

    series = _linear_series(propagate, rank, system.rho_system, system, drives, samples)
    controls = jax.vmap(values)(times)
    rates = jax.vmap(lambda t: jnp.asarray(protocol.rates(t), real))(times)
    power = jnp.sum(rates * series.drive_expectations, axis=-1)
    work_integral = _cumulative_quadrature(power, h)
    return _thermodynamics(system, times, controls, series, work_integral)


def _thermodynamics(system, times, controls, series: _Series, work_integral):
    eq = _equilibrium(system, 0)
    rho_s, reservoir_energy, energy = series.system_state, series.reservoir_energy, series.energy
    # times[0] = 0: there rho_s is rho_s(0) itself (with the series' derivative), as in evolve; the
    # propagated one had rounding-level eigenvalues, which gave D_iS(0) = -5.8e-15, not 0.
    rho_s = rho_s.at[0].set(with_value(rho_s[0], system.rho_system))
    beta = system.betas[0]
    system_entropy = von_neumann_entropy(rho_s)
    entropy0 = von_neumann_entropy(system.rho_system)
    total_entropy = entropy0 + eq.entropy
    system_energy = energy - reservoir_energy
    work = energy - energy[0]
    # Against the recorded t = 0 value, as the work: 0 at t = 0 (the Gibbs energy gave ~2e-16 there).
    heat = reservoir_energy[0] - reservoir_energy
    d_entropy = system_entropy - entropy0
    # Eq. 10 with ln rho_r^eq = -beta H_r - ln Z and S(rho(t)) = S_tot (unitary) is exactly
    # dS - beta Q; so evaluated, it does not add the rounding of ln Z and S_tot (each ~beta |E|)
    # to that of the heat, and equals entropy_production_balance, as in evolve.
    entropy_production = d_entropy - beta * heat
    free_energy_change = (system_energy - system_energy[0]) - d_entropy / beta
    return DrivenTrajectory(
        times=times,
        controls=controls,
        system_state=rho_s,
        system_entropy=system_entropy,
        energy=energy,
        system_energy=system_energy,
        reservoir_energy=reservoir_energy,
        work=work,
        work_integral=work_integral,
        heat=heat,
        entropy_flow=beta * heat,
        entropy_production=entropy_production,
        entropy_production_balance=d_entropy - beta * heat,
        free_energy_change=free_energy_change,
        dissipated_work=work - free_energy_change,
    )


class _NotAValue(Exception):
    """Raised by :func:`_value_key` for what it cannot key (an array of Python objects, nesting deeper
    than :data:`_MAX_DEPTH`)."""


_SCALAR_TYPES = (bool, int, float, complex, str, bytes, type(None))
_MAX_DEPTH = 8


class _Ref:
    """Equal only to a :class:`_Ref` of the same live object: a weak reference where the object
    allows one (the jit caches must not keep a user's objects alive), else a strong one."""

    __slots__ = ("weak", "strong", "ident")

    def __init__(self, obj):
        self.ident = id(obj)
        try:
            self.weak, self.strong = weakref.ref(obj), None
        except TypeError:
            self.weak, self.strong = None, obj

    def get(self):
        return self.strong if self.weak is None else self.weak()

    def __hash__(self):
        return self.ident

    def __eq__(self, other):
        if not isinstance(other, _Ref):
            return NotImplemented
        obj = self.get()
        return obj is not None and obj is other.get()


def _value_key(x, depth: int = 0):
    """``x`` as hashable data, equal exactly when the values are (conservatively): numbers and
    strings by type and ``repr`` (``-0.0`` and ``0.0`` differ, ``nan`` equals ``nan``), arrays by
    kind, dtype, shape, bytes and JAX weak type, tuples, lists, dicts and sets element by element.
    A plain object by :func:`_object_key` (mutating a nested object counts too); functions, modules
    and objects whose state is not in Python attributes by identity (:class:`_Ref`).
    """
    if depth > _MAX_DEPTH:
        raise _NotAValue
    if isinstance(x, _SCALAR_TYPES):
        return type(x), repr(x)
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return "key", str(x.dtype), _value_key(jax.random.key_data(x), depth + 1)
        a = np.asarray(x)
        if a.dtype.hasobject:
            raise _NotAValue
        return type(x).__name__, getattr(x, "weak_type", None), a.dtype.str, a.shape, a.tobytes()
    if isinstance(x, (tuple, list)):
        return type(x), tuple(_value_key(e, depth + 1) for e in x)
    if isinstance(x, dict):
        return type(x), tuple((_value_key(k, depth + 1), _value_key(v, depth + 1)) for k, v in x.items())
    if isinstance(x, (set, frozenset)):
        return type(x), frozenset(_value_key(e, depth + 1) for e in x)
    if callable(x) or isinstance(x, types.ModuleType) or not _has_visible_state(x):
        return "object", _Ref(x)
    return "object", _object_key(x, depth + 1)


def _has_visible_state(obj) -> bool:
    """Whether ``obj`` keeps its state in Python attributes (``__dict__`` or slots), where
    :func:`_object_key` can read it; an extension object (a random generator) may hide it."""
    return hasattr(obj, "__dict__") or any(getattr(cls, "__slots__", ()) for cls in type(obj).__mro__)


def _object_key(obj, depth: int) -> tuple:
    """``obj`` by value: its type, every attribute of its classes (methods and other functions by
    identity: one rebound at run time counts) and its instance attributes (``__dict__``, slots)."""
    state = {}
    for cls in reversed(type(obj).__mro__[:-1]):  # base first, without object's
        for name, value in vars(cls).items():
            if not (name.startswith("__") and name.endswith("__")):
                state["class " + name] = value
    state.update(getattr(obj, "__dict__", {}))
    for name in [n for cls in type(obj).__mro__ for n in getattr(cls, "__slots__", ())]:
        if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
            state[name] = getattr(obj, name)
    return (type(obj),) + tuple((name, _value_key(state[name], depth)) for name in sorted(state))


def _state_fingerprint(obj) -> tuple | None:
    """What determines a plain protocol's output, as :func:`_object_key` plus ``duration`` and
    ``n_controls`` (which may be properties). ``None`` when something cannot be keyed; the protocol
    then compiles on every call. Not included: what its methods read from module globals or closures."""
    try:
        extra = tuple((name, _value_key(getattr(obj, name), 1)) for name in ("duration", "n_controls")
                      if hasattr(obj, name))
        return _object_key(obj, 1) + extra
    except (_NotAValue, RecursionError):  # RecursionError: a container that holds itself
        return None


class _StaticProtocol:
    """A protocol that is not a pytree of arrays, passed to ``jax.jit`` as a static argument.

    Hashed and compared by ``key``: its class and the values it holds when the call is made
    (:func:`_state_fingerprint`), so equal-valued objects of one class share one executable, and
    an object mutated between calls compiles again. Its parameters are compile-time constants (no
    gradient flows to them). Functions it holds (and objects whose state Python cannot see) count
    by identity, a weak reference where possible: equal only while they live; nested plain objects
    by their attributes.
    Keying by ``(type, identity)`` as soon as it held a function ignored changes of its other
    attributes (``amp`` 0.3 -> 0.9 returned the 0.3 work).

    ``protocol`` is the object itself, read while ``_drive_jit`` traces; :func:`drive` sets it to
    ``None`` after the call, so the jit caches, which keep their static arguments, do not keep the
    user's object alive. Keying by ``id`` had compiled once per new object (40 objects with 2
    distinct values: 40 compilations, 103 of 113 s) and kept every object alive for the process.
    """

    __slots__ = ("protocol", "key", "_hash")

    def __init__(self, protocol):
        self.protocol = protocol
        state = _state_fingerprint(protocol)
        # Nothing to key it by: a fresh key, never equal (compiles every call).
        self.key = (type(protocol), object() if state is None else state)
        self._hash = hash(self.key)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, _StaticProtocol) and other.key == self.key


def _is_array_pytree(protocol) -> bool:
    """Whether ``protocol`` flattens to array leaves (a registered pytree such as ``FourierRamp``)."""
    leaves = jax.tree_util.tree_leaves(protocol)
    if len(leaves) == 1 and leaves[0] is protocol:
        return False
    return all(isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int)) for leaf in leaves)


@functools.partial(jax.jit, static_argnames=("static_protocol", "n_steps", "rank", "checkpoint", "batched",
                                             "batch_size"))
def _drive_jit(system, drives, protocol, *, static_protocol, n_steps, rank, checkpoint, batched, batch_size):
    if static_protocol is not None:
        protocol = static_protocol.protocol
    if isinstance(protocol, PiecewiseConstant):
        def one(s):
            return _piecewise_kernel(s, drives, protocol, rank=rank, checkpoint=checkpoint)
    else:
        def one(s):
            return _smooth_kernel(s, drives, protocol, n_steps=n_steps, rank=rank, checkpoint=checkpoint)
    if not batched:
        return one(system)
    return jax.lax.map(one, system, batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# Public entry point: validation, then the jitted kernel.


def _as_operators(name: str, ops) -> tuple:
    """One operator (a 2-D array or nested lists of numbers, as OpenSystem reads one matrix) or a
    sequence of them: one matrix as nested lists was read as two operators (its rows)."""
    if ops is None:
        return ()
    return _as_matrix_tuple(name, ops, allow_empty=True)


def _drive_dtype(system_dtype, *groups) -> np.dtype:
    """The system's dtype, made complex (same precision) when a drive operator is complex.

    Casting a complex drive such as sigma_y to a real system's dtype would drop its imaginary part
    and silently propagate under another Hamiltonian.
    """
    if any(jnp.iscomplexobj(op) for ops in groups for op in ops):
        return jnp.result_type(system_dtype, jnp.complex64)
    return system_dtype


def _checked_operators(name: str, ops: tuple, dim: int) -> tuple:
    """Each a Hermitian ``(dim, dim)`` matrix of numbers (shape and dtype checked when traced too)."""
    out = []
    for j, op in enumerate(ops):
        op = numeric(f"{name}[{j}]", op)
        if op.shape != (dim, dim):
            raise InputError(f"{name}[{j}] has shape {op.shape}, expected ({dim}, {dim}).")
        out.append(check_matrix(f"{name}[{j}]", op))
    return tuple(out)


def _operator_stack(name: str, ops: tuple, dim: int, dtype) -> Array:
    if not ops:
        return jnp.zeros((0, dim, dim), dtype)
    return jnp.stack([jnp.asarray(op, dtype) for op in ops])


def _check_smooth_protocol(protocol, n_controls: int, real) -> None:
    """A user's smooth protocol: ``duration`` a positive finite scalar (a negative one ran the grid
    backwards in time), ``values(t)`` and ``rates(t)`` of shape ``(n_controls,)`` (a longer one
    failed inside the kernel's tensordot). The shapes come from ``jax.eval_shape``: nothing runs."""
    name = type(protocol).__name__
    duration = numeric(f"{name}.duration", protocol.duration, real=True)
    if duration.shape != ():
        raise InputError(f"{name}.duration has shape {duration.shape}; it must be a scalar, the protocol's length.")
    if _is_concrete(duration) and not (np.isfinite(duration) and float(duration) > 0):
        raise InputError(f"{name}.duration={float(duration)!r} must be finite and > 0 (the protocol's length in time).")
    t = jax.ShapeDtypeStruct((), real)
    for method in ("values", "rates"):
        shape = jax.eval_shape(getattr(protocol, method), t).shape
        if shape != (n_controls,):
            raise InputError(f"{name}.{method}(t) has shape {shape}, but {name}.n_controls = {n_controls}; it must "
                             f"return one amplitude per control, shape (n_controls,).")


def drive(
    open_system: OpenSystem,
    protocol,
    *,
    system_drives: Sequence[Array] | Array = (),
    coupling_drives: Sequence[Array] | Array = (),
    n_steps: int | None = None,
    batch_size: int | None = None,
    checkpoint: bool = False,
) -> DrivenTrajectory:
    """Propagate ``open_system`` under ``H(t) = H + sum_j u_j(t) G_j`` and return its energetics.

    ``W(t) = <H(t)>_t - <H(0)>_0``, ``dU = W + Q`` with ``U = <H_s(t) + V(t)>`` (the interaction
    included, unlike ``evolve``'s ``system_energy``), and ``T D_iS = W - dF`` with ``dF = dU - T dS``
    (eq. 24). One reservoir (``K = 1``), canonical.

    Args:
        open_system: :class:`OpenSystem` with ``K = 1`` and ``beta > 0`` giving ``H_s(0)``-part,
            ``H_r``, ``V``-part, ``beta`` and ``rho_s(0)``. Its leaves may carry a leading
            realization axis (e.g. ``jax.vmap(model.open_system)(xs)``): the result then has it too.
        protocol: :class:`~qep_jax.protocols.PiecewiseConstant` (exact) or a smooth protocol with
            ``values(t)``/``rates(t)``/``duration``/``n_controls`` such as
            :class:`~qep_jax.protocols.FourierRamp`: ``duration`` finite and ``> 0``, ``values(t)``
            and ``rates(t)`` of shape ``(n_controls,)``. A plain object (not a pytree) is a static
            constant, compiled once per class and attribute values (each new value compiles again;
            what its methods read from module globals or closures is frozen in at compilation);
            register it as a pytree to differentiate its parameters or to scan over them without
            recompiling (docs/driven.md). ``n_controls = 0`` with no drives is an undriven run.
        system_drives: ``n_s`` Hermitian ``(d_s, d_s)`` operators ``A_j``: ``H_s(t) = H_s + sum u_j A_j``
            (a sequence, a 3-D array, or one matrix: a 2-D array or nested lists of numbers).
        coupling_drives: ``n_v`` Hermitian ``(D, D)`` operators ``B_j``: ``V(t) = V + sum u_{n_s+j} B_j``
            (given as ``system_drives``).
            ``protocol.n_controls`` must equal ``n_s + n_v``.
        n_steps: time steps for a smooth protocol (``>= 3``); must be ``None`` for piecewise constant.
        batch_size: realizations propagated together (``jax.lax.map``) for a batched ``open_system``.
        checkpoint: ``True`` to recompute each step in reverse-mode differentiation instead of storing it.

    Returns:
        :class:`DrivenTrajectory`, fields ``(T, ...)`` (``(n_realizations, T, ...)`` when batched).

    Example:
        >>> import jax, jax.numpy as jnp, qep_jax
        >>> jax.config.update("jax_enable_x64", True)
        >>> model = qep_jax.SpinGORM(n_levels=8, delta=0.0, coupling_strength=0.3, beta=10.0)
        >>> system = model.open_system(qep_jax.goe(jax.random.key(0), 8))
        >>> ramp = qep_jax.PiecewiseConstant(jnp.full(10, 0.5), jnp.linspace(0.0, 0.5, 10)[:, None])
        >>> out = qep_jax.drive(system, ramp, system_drives=[jnp.diag(jnp.array([-0.5, 0.5]))])
        >>> bool(abs(out.dissipated_work[-1] - out.entropy_production[-1] / 10.0) < 1e-10)
        True
    """
    if not isinstance(open_system, OpenSystem):
        raise InputError(f"open_system must be a qep_jax.OpenSystem, got {type(open_system).__name__}.")
    if open_system.n_reservoirs != 1:
        raise InputError(
            f"drive supports one reservoir (the first law of physics.md §3 uses one temperature); "
            f"got K = {open_system.n_reservoirs}."
        )
    if open_system.number_operators is not None:
        raise InputError("drive supports canonical reservoirs only; build the OpenSystem without number_operators.")
    batched = open_system.h_system.ndim == 3
    if _is_concrete(open_system.betas) and not np.all(np.asarray(open_system.betas) > 0):
        raise InputError("betas must be > 0: the free energy F = U - T S needs a positive temperature.")
    d_s, total = open_system.system_dim, open_system.total_dim
    system_drives = _checked_operators("system_drives", _as_operators("system_drives", system_drives), d_s)
    coupling_drives = _checked_operators("coupling_drives", _as_operators("coupling_drives", coupling_drives), total)
    checkpoint = check_flag("checkpoint", checkpoint)
    dtype = _drive_dtype(open_system.coupling.dtype, system_drives, coupling_drives)
    drives = _Drives(
        _operator_stack("system_drives", system_drives, d_s, dtype),
        _operator_stack("coupling_drives", coupling_drives, total, dtype),
    )
    n_controls = drives.system.shape[0] + drives.coupling.shape[0]
    if isinstance(protocol, PiecewiseConstant):
        if n_steps is not None:
            raise InputError("n_steps applies to smooth protocols; a PiecewiseConstant protocol sets its own steps.")
    elif isinstance(protocol, FourierRamp) or (hasattr(protocol, "values") and hasattr(protocol, "rates")):
        missing = [a for a in ("duration", "n_controls") if not hasattr(protocol, a)]
        if missing:
            raise InputError(
                f"smooth protocol {type(protocol).__name__} has no {' or '.join(missing)}; a smooth protocol "
                f"needs values(t), rates(t), duration and n_controls."
            )
        if not is_int(n_steps) or n_steps < 3:
            raise InputError(f"n_steps={n_steps!r}: a smooth protocol needs an int n_steps >= 3.")
        n_steps = int(n_steps)
    else:
        raise InputError(
            f"protocol must be a qep_jax.PiecewiseConstant or a smooth protocol (values/rates), "
            f"got {type(protocol).__name__}."
        )
    static_protocol = None
    if not _is_array_pytree(protocol):
        # A plain object (not a registered pytree): jit takes it as a static argument.
        traced = [leaf for leaf in jax.tree_util.tree_leaves(getattr(protocol, "__dict__", {}))
                  if isinstance(leaf, jax.core.Tracer)]
        if traced:
            raise InputError(
                f"protocol {type(protocol).__name__} holds traced values (jit/grad/vmap over its parameters) but "
                f"is not a JAX pytree, so drive can only treat it as a constant. Register its class, e.g. "
                f"jax.tree_util.register_dataclass (frozen dataclass) or register_pytree_node, so that its "
                f"parameters are array leaves."
            )
        static_protocol, protocol = _StaticProtocol(protocol), None
    target = protocol if static_protocol is None else static_protocol.protocol
    n_protocol = target.n_controls
    if not is_int(n_protocol) or n_protocol < 0:
        raise InputError(f"protocol.n_controls={n_protocol!r} must be an int, the number of control amplitudes.")
    if not isinstance(target, (PiecewiseConstant, FourierRamp)):  # those two check themselves
        _check_smooth_protocol(target, int(n_protocol), jnp.finfo(dtype).dtype)
    if n_protocol != n_controls:
        raise InputError(
            f"protocol has {n_protocol} controls but {drives.system.shape[0]} system_drives + "
            f"{drives.coupling.shape[0]} coupling_drives were given; give one drive operator per control."
        )
    if batch_size is not None:
        batch_size = check_count("batch_size", batch_size)
    warn_if_float32(dtype)
    n_batch = int(open_system.h_system.shape[0]) if batched else 1
    try:
        return _drive_jit(
            open_system, drives, protocol, static_protocol=static_protocol, n_steps=n_steps,
            rank=_static_rank(open_system.rho_system),
            checkpoint=checkpoint, batched=batched, batch_size=min(batch_size or n_batch, n_batch),
        )
    finally:
        if static_protocol is not None:
            # The jit caches keep their static arguments (this key) for the life of the process.
            static_protocol.protocol = None


# --------------------------------------------------------------------------------------------
# Landauer bounds for erasure with a finite reservoir (post-processing, NumPy).


class LandauerBounds(NamedTuple):
    """Lower bounds on the heat ``-Q = <H_r>_t - <H_r>_0`` given to the reservoir when ``S_s`` drops by ``dS_erased``.

    landauer: ``dS_erased / beta``.
    reeb_wolf: ``(dS + 2 dS^2 / (ln^2(d - 1) + 4)) / beta`` for ``dS >= 0`` and ``d >= 3`` (Reeb & Wolf 2014,
        Theorem 6 with ``N = ln^2(d-1)/4 + 1``; dimension ``d`` only); ``dS / beta`` for ``dS < 0`` and,
        conservatively, for a two-level reservoir (``d = 2``), where the quadratic term is not applied.
    spectral: minimum of ``<H_r>_sigma - <H_r>_eq`` over reservoir states with
        ``S(sigma) >= S(rho_r^eq) + dS`` (a Gibbs state at ``beta' <= beta``), which the equality
        ``beta(-Q) = dS + I(s':r') + D(rho_r' || rho_r^eq)`` implies for this ``H_r``; ``inf`` if no
        state of the reservoir has that much entropy (``dS > ln d - S(rho_r^eq)``);
        ``e_min - <H_r>_eq`` when the constraint is met by a ground state, ``S(rho_r^eq) + dS <= ln g0``
        (``g0`` the ground degeneracy; always when ``dS <= -S(rho_r^eq)``).
    """

    landauer: np.ndarray
    reeb_wolf: np.ndarray
    spectral: np.ndarray


_FLOAT_MAX = float(np.finfo(np.float64).max)


def _gibbs(energies: np.ndarray, beta: float) -> tuple[float, float]:
    logits = -beta * (energies - energies.min())
    p = np.exp(logits - logits.max())
    p /= p.sum()
    nz = p > 0
    return float(-np.sum(p[nz] * np.log(p[nz]))), float(np.sum(p * energies))


def landauer_bounds(entropy_decrease, reservoir_energies, beta) -> LandauerBounds:
    """Landauer, Reeb-Wolf and reservoir-spectrum bounds on the heat dissipated into a finite reservoir.

    ``-Q >= B(dS)`` with ``dS = S(rho_s(0)) - S(rho_s(t))`` for any unitary process that starts
    from ``rho_s(0) (x) exp(-beta H_r)/Z``.

    Args:
        entropy_decrease: ``(...)`` finite ``dS`` in nats.
        reservoir_energies: ``(d,)`` real eigenvalues of ``H_r`` (not the matrix), ``d >= 2``.
        beta: finite real inverse temperature ``> 0``.

    Returns:
        :class:`LandauerBounds`, each ``(...)`` in energy units.

    Example:
        >>> import numpy as np, qep_jax
        >>> b = qep_jax.landauer_bounds(np.log(2), np.linspace(-0.5, 0.5, 20), 10.0)
        >>> bool(b.spectral >= b.reeb_wolf >= b.landauer)
        True
    """
    from scipy.optimize import brentq

    # Checked before any arithmetic: NaN, inf or an array beta reached SciPy's brentq and failed there.
    for name, value in (("entropy_decrease", entropy_decrease), ("reservoir_energies", reservoir_energies),
                        ("beta", beta)):
        if not _is_concrete(value):
            raise InputError(f"{name} is traced (jit/grad/vmap); landauer_bounds is NumPy post-processing of "
                             f"concrete values: call it outside the transformation.")
    ds = numeric("entropy_decrease", entropy_decrease, real=True)
    check_finite("entropy_decrease", ds)
    energies = numeric("reservoir_energies", reservoir_energies, real=True)
    if energies.ndim != 1:  # a matrix H_r was flattened and its zeros taken for levels
        raise InputError(f"reservoir_energies has shape {energies.shape}; give the (d,) eigenvalues of H_r, "
                         f"e.g. np.linalg.eigvalsh(h_r), not the matrix.")
    if energies.size < 2:
        raise InputError("reservoir_energies must be at least two finite eigenvalues of H_r.")
    check_finite("reservoir_energies", energies)
    check_real_scalar("beta", beta)
    beta = float(beta)
    if not beta > 0:
        raise InputError(f"beta={beta!r} must be > 0.")
    ds = np.asarray(ds, dtype=float)
    energies = np.sort(np.asarray(energies, dtype=float))
    d = energies.size
    landauer = np.asarray(ds / beta)  # a 0-d array for a scalar dS, as the other two bounds
    quadratic = 2 * ds**2 / (np.log(d - 1) ** 2 + 4) if d > 2 else np.zeros_like(ds)
    reeb_wolf = np.where(ds >= 0, (ds + quadratic) / beta, landauer)
    s0, e0 = _gibbs(energies, beta)
    s_max = math.log(d)
    # S(beta') of the Gibbs state falls from ln d (beta' = 0) to ln g0 (beta' -> inf), g0 the ground
    # degeneracy; minimizing <H_r> at S >= target picks the largest beta' with S(beta') >= target.
    gap = energies - energies[0]
    tol = 1e-12 * max(1.0, float(np.max(np.abs(energies))))
    s_ground = math.log(int(np.sum(gap <= tol)))

    def spectral_one(x: float) -> float:
        target = s0 + x
        if target > s_max - 1e-13:
            return math.inf if target > s_max + 1e-12 else float(np.mean(energies) - e0)
        if abs(x) < 1e-14:
            return 0.0
        if target <= s_ground + 1e-13:
            # Vacuous constraint (in particular dS < -S(rho_r^eq), target < 0): the ground space, or
            # any state in it, reaches the lowest energy.
            return float(energies[0] - e0)
        if x > 0:
            # The root lies below beta; brentq over [0, beta] did not converge in 100 iterations for
            # beta = 1e300, so the bracket doubles up from the spectrum's scale 1 / (e_max - e_min).
            lo, hi = 0.0, min(beta, 1.0 / (energies[-1] - energies[0]))
            while hi < beta and _gibbs(energies, hi)[0] > target:
                lo, hi = hi, min(2 * hi, beta)
        else:
            # S(hi) -> ln g0 < target, so the doubling stops once beta' gap_1 ~ ln(1/(target - ln g0)),
            # or at the largest float (doubling to inf made S NaN).
            lo, hi = beta, min(2 * beta, _FLOAT_MAX)
            while _gibbs(energies, hi)[0] > target:
                if hi == _FLOAT_MAX:
                    return _gibbs(energies, hi)[1] - e0
                lo, hi = hi, min(2 * hi, _FLOAT_MAX)
        b = brentq(lambda b: _gibbs(energies, b)[0] - target, lo, hi, xtol=1e-14, rtol=1e-14)
        return _gibbs(energies, b)[1] - e0

    spectral = np.vectorize(spectral_one, otypes=[float])(ds)
    return LandauerBounds(landauer, reeb_wolf, spectral)
