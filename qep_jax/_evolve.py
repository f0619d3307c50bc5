"""Exact time evolution of an :class:`OpenSystem` and every entropy-production quantity."""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from . import _linalg
from ._entropy import von_neumann_entropy
from ._open_system import InputError, OpenSystem, _is_concrete, _kron_all, check_count, check_flag, numeric
from ._propagator_rules import (SeriesConfig, n_series_observables, spectral_series, system_pairs,
                                system_state_from_pairs, thermal_state)
from ._trajectory import Trajectory

# Working memory the time-point loop may use per realization before it is split into batches.
# Larger blocks bring no speed: at N = 200 blocks of 8-25 time points ran the full set fastest.
DEFAULT_TIME_BLOCK_BYTES = 64 * 2**20


class _Equilibrium(NamedTuple):
    rho: Array  # (d_r, d_r) exp(-beta G_r) / Z_r with G_r = H_r - mu_r N_r
    sqrt_rho: Array  # (d_r, d_r)
    log_partition: Array  # ()
    entropy: Array  # ()
    grand_energy: Array  # () <G_r>_eq


def _equilibrium(system: OpenSystem, r: int) -> _Equilibrium:
    # Derivatives use divided differences of exp on the spectrum of G_r: finite when G_r is degenerate.
    return _Equilibrium(*thermal_state(system.grand_hamiltonian(r), system.betas[r], system.diagonal_reservoirs))


def with_value(x: Array, value: Array) -> Array:
    """``value`` (cast to ``x``'s dtype) carrying ``x``'s derivative."""
    return jax.lax.stop_gradient(value.astype(x.dtype) - x) + x


def _static_rank(rho_system) -> int:
    """Eigenvalues of ``rho_s(0)`` ``(..., d_s, d_s)`` the initial factor keeps: all but those at
    rounding level (the largest count over a batch).

    A dropped weight ``q`` misses ``q beta |<H_r>|`` in ``D_iS``; the earlier cut at ``1e-12``
    dropped ``q = 9e-13`` and put 4.5e-8 into ``D_iS`` at ``beta = 1e5``. ``10 d_s eps`` sits above
    the ~eps eigenvalues ``eigvalsh`` returns for an exactly pure state given in another basis.
    """
    d_s = int(rho_system.shape[-1])
    if not _is_concrete(rho_system):
        return d_s
    arr = np.asarray(rho_system)
    lam = np.linalg.eigvalsh(arr.reshape(-1, d_s, d_s))
    # The eps of the state's own precision: a pure complex64 state has eigenvalues ~1e-8, which the
    # float64 cut counted as a second rank (twice the reservoir-entropy factor, same values).
    tol = 10 * d_s * np.finfo(np.result_type(arr.dtype, np.float32)).eps
    counts = np.sum(lam > tol * np.maximum(1.0, lam[:, -1:]), axis=-1)
    return max(1, int(np.max(counts)))


def _static_rebuilt_entry(rho_system) -> int | None:
    """The population of ``rho_s(t)`` rebuilt from the trace (see ``system_pairs``): the largest
    initial one of a concrete ``rho_system``; ``None`` (all computed) for a traced one."""
    if not _is_concrete(rho_system):
        return None
    return int(np.argmax(np.real(np.diagonal(np.asarray(rho_system)))))


def _evolve_kernel(
    system: OpenSystem,
    times: Array,
    *,
    reservoir_entropies: bool,
    time_batch_size: int,
    system_rank: int,
    rebuilt_entry: int | None = None,
    checkpoint: bool = False,
) -> Trajectory:
    """One realization, all time points. Shapes are static; see :class:`Trajectory`.

    With ``checkpoint`` reverse-mode differentiation stores only this function's inputs and
    recomputes its forward pass, so the gradient of an ensemble mean over ``lax.map``-ped
    realizations keeps one realization's intermediates at a time (values are unchanged); the
    inputs are the system's D x D matrices. The models' ``simulate`` checkpoint the whole
    realization instead (draw included), which stores only its index. The per-time-chunk
    checkpoints inside the derivative rules are always on.
    """
    body = functools.partial(
        _kernel_body, reservoir_entropies=reservoir_entropies, time_batch_size=time_batch_size,
        system_rank=system_rank, rebuilt_entry=rebuilt_entry,
    )
    return jax.checkpoint(body)(system, times) if checkpoint else body(system, times)


def _kernel_body(system: OpenSystem, times: Array, *, reservoir_entropies: bool, time_batch_size: int,
                 system_rank: int, rebuilt_entry: int | None) -> Trajectory:
    dims = system.dims
    d_s, n_res = dims[0], system.n_reservoirs
    has_numbers = system.number_operators is not None

    eqs = [_equilibrium(system, r) for r in range(n_res)]
    rho0 = _kron_all([system.rho_system] + [e.rho for e in eqs])
    reservoir_ops = list(system.h_reservoirs) + (list(system.number_operators) if has_numbers else [])
    factors = list(range(1, n_res + 1)) * (2 if has_numbers else 1)
    config = SeriesConfig(dims, tuple(factors), reservoir_entropies, int(time_batch_size), int(system_rank),
                          system.diagonal_reservoirs, rebuilt_entry)
    # One eigh of H; derivatives through the Daleckii-Krein rule of _propagator_rules (exact at degeneracies).
    series = spectral_series(config, system.hamiltonian(), rho0, tuple(reservoir_ops), system.rho_system,
                             tuple(e.sqrt_rho for e in eqs), times)
    total_energy = series.total_energy
    values = series.values
    pairs = system_pairs(d_s, rebuilt_entry)
    n_pairs = len(pairs)
    # rho_s(0) + change, not the series' values: a population that starts at 0 then keeps relative
    # precision as t -> 0 (the values' ~eps |rho| rounding made D_iS ~85% off below t ~ 5e-3 in
    # float32, and negative). The series sees the Hermitian part of rho_s(0), as here.
    start = (system.rho_system + jnp.conj(system.rho_system).T) / 2
    initial = jnp.array([start[i, j] for i, j in pairs], series.changes.dtype).reshape(n_pairs)
    rho_s = system_state_from_pairs(initial + series.changes[:, :n_pairs], d_s,
                                    jnp.real(jnp.trace(system.rho_system)), rebuilt_entry)
    # At t = 0 take the value of rho_s(0) itself, keeping the series' derivative (d/dt included).
    # The series gives it to rounding only: a pure rho_s(0) came back with an eigenvalue ~eps, whose
    # entropy weight -(ln eps + 1) ~ 35 (zero for the exact input) put ~34 into d D_iS(0) / d rho_s(0).
    rho_s = jnp.where((times == 0)[:, None, None], with_value(rho_s, system.rho_system), rho_s)
    obs = jnp.real(values[:, n_pairs:])
    reservoir_energy = obs[:, :n_res]
    particle_number = obs[:, n_res:] if has_numbers else None
    change = jnp.real(series.changes[:, n_pairs:])

    mus = system.chemical_potentials
    # Q_r = -(change of <G_r>), from the cancellation-free series: exactly 0 at t = 0 and accurate
    # to relative rounding as t -> 0, where <G_r>_0 - <G_r>_t left ~eps |<G_r>| (times beta in D_iS).
    heat = -(change[:, :n_res] - (mus * change[:, n_res:] if has_numbers else 0.0))
    betas = system.betas

    system_entropy = von_neumann_entropy(rho_s)
    system_energy = jnp.real(jnp.einsum("ij,tji->t", system.h_system, rho_s))
    interaction_energy = total_energy - system_energy - jnp.sum(reservoir_energy, axis=-1)
    entropy_flow = heat @ betas
    entropy0 = von_neumann_entropy(system.rho_system)
    total_entropy = entropy0 + sum(e.entropy for e in eqs)
    # Eq. 10, Tr rho ln rho - Tr rho ln(rho_s (x) prod rho_r^eq), with S(rho(t)) = S(rho(0)) and
    # ln rho_r^eq = -beta_r G_r - ln Z_r, is exactly Delta S_s + sum_r beta_r (<G_r>_t - <G_r>_0):
    # evaluated so, not as S_s - S_tot + beta <G_r>_t + ln Z, whose terms of size beta |<G_r>|
    # cancel (D_iS(0) = -4.5e-8 at beta = 1e8). The same expression is the balance form, eq. 7.
    d_system = system_entropy - entropy0
    balance = d_system - entropy_flow
    entropy_production = balance
    if n_res == 1:
        energy0 = jnp.real(jnp.trace(system.h_system @ system.rho_system))
        open_form = d_system - betas[0] * (system_energy - energy0)
    else:
        open_form = None

    expensive = {}
    if reservoir_entropies:
        s_eq = jnp.stack([e.entropy for e in eqs])
        # At t = 0 the reservoirs are in equilibrium exactly, and uncorrelated: pinned like rho_s,
        # so that every correlation below is exactly 0 there (rounding made I(0) ~ -1e-16 < 0).
        at_zero = (times == 0)[:, None]
        s_r = jnp.where(at_zero, with_value(series.reservoir_entropy, s_eq), series.reservoir_entropy)
        s_joint = (jnp.where(at_zero[:, 0], with_value(series.joint_reservoir_entropy, jnp.sum(s_eq)),
                             series.joint_reservoir_entropy) if n_res > 1 else s_r[:, 0])
        # As changes since t = 0, with S(rho(t)) = S(rho(0)): I = dS_s + dS_R, eq. 18's terms likewise.
        d_s_r = s_r - s_eq
        d_joint = s_joint - jnp.sum(s_eq) if n_res > 1 else d_s_r[:, 0]
        expensive = dict(
            reservoir_entropy=s_r,
            mutual_information=d_system + d_joint,
            correlation_entropy=-(d_system + jnp.sum(d_s_r, axis=-1)),
            # beta <G_r>_t + ln Z_r - S_r(t) with beta <G_r>_0 + ln Z_r = S_r^eq, as for D_iS.
            reservoir_relative_entropy=-d_s_r - heat * betas,
            inter_reservoir_correlation=(jnp.sum(d_s_r, axis=-1) - d_joint) if n_res > 1 else None,
        )
    return Trajectory(
        times=times,
        system_state=rho_s,
        system_entropy=system_entropy,
        system_energy=system_energy,
        interaction_energy=interaction_energy,
        reservoir_energy=reservoir_energy,
        reservoir_particle_number=particle_number,
        heat=heat,
        entropy_flow=entropy_flow,
        entropy_production=entropy_production,
        entropy_production_balance=balance,
        entropy_production_open=open_form,
        total_entropy=total_entropy,
        **expensive,
    )


def time_block_bytes(dims: tuple[int, ...], system_rank: int, n_observables: int, itemsize: int,
                     reservoir_entropies: bool) -> int:
    """Bytes of working memory one time point of the loop needs (per realization)."""
    total = math.prod(dims)
    per_time = 4 * n_observables * total * itemsize  # cos/sin products of the weights
    if reservoir_entropies:
        rank = system_rank * total // dims[0]
        per_time += 3 * total * rank * 2 * itemsize  # complex X(t) and its two real halves
        per_time += 2 * max(d * d for d in dims[1:]) * 2 * itemsize
        if len(dims) > 2:
            per_time += 2 * (total // dims[0]) ** 2 * 2 * itemsize
    return per_time


def realization_bytes(dims: tuple[int, ...], n_times: int, *, system_rank: int, n_observables: int,
                      itemsize: int, reservoir_entropies: bool, time_batch_size: int) -> int:
    """Estimated peak working memory of one realization (the bound used to choose batch sizes)."""
    total = math.prod(dims)
    # H, W, eigh workspace, rho0 and its eigenbasis form, the stacked weights and their transpose,
    # and the factor W^dag (L (x) S) of rho0 in the eigenbasis (with a copy).
    fixed = (8 + 2 * n_observables) * total * total * itemsize
    fixed += 2 * total * (system_rank * total // dims[0]) * itemsize
    per_time = time_block_bytes(dims, system_rank, n_observables, itemsize, reservoir_entropies)
    return fixed + min(time_batch_size, n_times) * per_time + n_times * 64 * itemsize


def format_bytes(n: float, up: bool = False) -> str:
    """``n`` in the largest binary unit, 2 decimals; ``up`` rounds up, so a needed size printed
    this way always fits (a need of 2.0001 GiB is shown as 2.01 GiB, not as the 2.00 GiB budget)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = math.ceil(n / size * 100) / 100 if up else math.floor(n / size * 100) / 100
            return f"{value:.2f} {unit}"
    return f"{math.ceil(n)} B"


# Realizations evaluated together on the CPU (the lax.map batch). Per-realization time of
# SpinGORM.simulate against this batch (T = 100, 2-core AMD EPYC, BLAS pinned to one thread),
# cheap set: best at 4-8 for N <= 64 and at 2-4 for N = 128-400; full set: best at 2-4. One batch
# of the whole ensemble was 10-30% (cheap) and up to 2x (full) slower, its working set out of
# cache; batch 1 was 20-30% slower at N >= 128, with no batch of eigendecompositions to spread
# over the cores.
CPU_BATCH_BYTES = 32 * 2**20
CPU_MAX_BATCH = 8


def cpu_realization_batch(realization_bytes: int) -> int:
    """Default realizations per ``lax.map`` step on the CPU: as many as fit in ``CPU_BATCH_BYTES``
    (at most ``CPU_MAX_BATCH``), and at least one per core."""
    cores = _linalg.host_cores()
    return int(max(min(CPU_MAX_BATCH, CPU_BATCH_BYTES // max(realization_bytes, 1)), cores))


def auto_time_batch_size(dims, n_times, system_rank, n_observables, itemsize, reservoir_entropies,
                         block_bytes: int = DEFAULT_TIME_BLOCK_BYTES) -> int:
    per_time = time_block_bytes(dims, system_rank, n_observables, itemsize, reservoir_entropies)
    return int(max(1, min(n_times, block_bytes // max(per_time, 1))))


def plan_batches(dims, n_times, n_realizations, n_observables, itemsize, reservoir_entropies, time_batch_size,
                 batch_size, memory_budget) -> tuple[int, int]:
    """``(time_batch_size, batch_size)`` of a ``lax.map`` over realizations of system ``dims`` (rank-1
    ``rho_s(0)``) for the models' ``simulate``: ``None`` means automatic; a realization that does
    not fit ``memory_budget`` bytes raises :class:`qep_jax.InputError`. Automatic batches are as
    many realizations as the budget holds, on the CPU at most :func:`cpu_realization_batch`."""
    if time_batch_size is None:
        time_batch_size = auto_time_batch_size(dims, n_times, 1, n_observables, itemsize, reservoir_entropies)
    else:
        time_batch_size = check_count("time_batch_size", time_batch_size)
    per_realization = realization_bytes(dims, n_times, system_rank=1, n_observables=n_observables,
                                        itemsize=itemsize, reservoir_entropies=reservoir_entropies,
                                        time_batch_size=time_batch_size)
    if per_realization > memory_budget:
        raise InputError(
            f"one realization needs about {format_bytes(per_realization, up=True)}, more than "
            f"memory_budget={memory_budget} bytes ({format_bytes(memory_budget)}); raise memory_budget "
            f"or lower time_batch_size / n_levels."
        )
    if batch_size is None:
        batch_size = int(max(1, min(n_realizations, memory_budget // per_realization)))
        if jax.default_backend() == "cpu":
            batch_size = min(batch_size, cpu_realization_batch(per_realization))
    else:
        batch_size = check_count("batch_size", batch_size)
    return int(min(time_batch_size, n_times)), int(min(batch_size, n_realizations))


def check_times(times, dtype=None) -> Array:
    """Validate a time grid: 1-D, finite, real; returns it as a JAX array of the real ``dtype``.

    A traced grid (jit, vmap) is checked by what its tracer knows, its shape and type: a scalar
    becomes ``(1,)`` as a concrete one does, instead of failing inside the kernel.
    """
    if not _is_concrete(times):
        if jnp.iscomplexobj(times) or jnp.asarray(times).dtype == jnp.bool_:
            raise InputError("times must be finite real numbers.")
        times = jnp.atleast_1d(times)
        if times.ndim != 1 or times.shape[0] == 0:
            raise InputError(f"times must be a non-empty 1-D array of time points, got shape {times.shape}.")
        return times.astype(dtype or jnp.result_type(float))
    arr = np.asarray(numeric("times", times, real=True))  # strings, None and bool are refused
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"times must be a non-empty 1-D array of time points, got shape {arr.shape}.")
    if not np.isrealobj(arr) or not np.all(np.isfinite(arr)):
        raise InputError("times must be finite real numbers.")
    dtype = dtype or jnp.result_type(float)
    largest = float(np.max(np.abs(arr)))
    if largest > float(jnp.finfo(dtype).max):  # the cast would make it inf, and every value NaN
        raise InputError(f"times: {largest:g} overflows {jnp.dtype(dtype).name} (largest "
                         f"{float(jnp.finfo(dtype).max):.3g}); use smaller times, or float64 "
                         f"(jax.config.update('jax_enable_x64', True)).")
    cast = arr.astype(jnp.dtype(dtype))
    order = np.argsort(arr, kind="stable")
    merged = np.flatnonzero((np.diff(arr[order]) != 0) & (np.diff(cast[order]) == 0))
    if merged.size:  # e.g. 1e7 + 0.1 k in float32: the grid had 2 distinct times of 10, silently
        a, b = arr[order][merged[0]], arr[order][merged[0] + 1]
        raise InputError(f"times {float(a)!r} and {float(b)!r} are the same number in {jnp.dtype(dtype).name}; "
                         f"space the times further apart, or use float64 "
                         f"(jax.config.update('jax_enable_x64', True)).")
    return jnp.asarray(cast)


def warn_if_float32(dtype) -> None:
    if jnp.finfo(dtype).bits < 64:
        warnings.warn(
            "qep_jax is computing in float32 (jax_enable_x64 is off or float32 inputs were given): "
            "expect ~1e-6 absolute errors in entropies (times beta for the heat terms), growing with "
            "|E| t at late times (see README, 'Precision'). "
            "Call jax.config.update('jax_enable_x64', True) at program start for float64.",
            stacklevel=3,
        )


@functools.partial(jax.jit, static_argnames=("reservoir_entropies", "time_batch_size", "system_rank",
                                             "rebuilt_entry"))
def _evolve_jit(system, times, *, reservoir_entropies, time_batch_size, system_rank, rebuilt_entry):
    return _evolve_kernel(
        system, times, reservoir_entropies=reservoir_entropies, time_batch_size=time_batch_size,
        system_rank=system_rank, rebuilt_entry=rebuilt_entry,
    )


def n_observables(system: OpenSystem, rebuilt_entry: int | None) -> int:
    k = system.n_reservoirs * (2 if system.number_operators is not None else 1)
    return n_series_observables(system.system_dim, k, rebuilt_entry)


def evolve(
    open_system: OpenSystem,
    times,
    *,
    reservoir_entropies: bool = True,
    time_batch_size: int | None = None,
) -> Trajectory:
    """Exact unitary evolution and every entropy-production quantity of ``open_system``.

    Diagonalises ``H`` once (``O(D^3)``); the cheap quantities (system state, energies, heat,
    entropy flow, ``D_iS`` in both forms, eq. 25) then cost ``O(D^2)`` per time point. With
    ``reservoir_entropies=True`` the reservoir reduced states are built from a ``D x R`` factor
    of ``rho(t)`` (``O(D^2 R)`` per time point, ``R = rank(rho_s(0)) D / d_s``); the ``D x D``
    state is never formed.

    Args:
        open_system: the problem, see :class:`OpenSystem`.
        times: ``(T,)`` time points (any order, any sign); a scalar is one time point (``T = 1``).
        reservoir_entropies: also compute ``reservoir_entropy``, ``mutual_information``,
            ``correlation_entropy``, ``reservoir_relative_entropy`` (and the inter-reservoir
            term for ``K >= 2``).
        time_batch_size: time points processed together (memory ~ batch x D x R); default
            chosen so one batch needs at most 64 MiB.

    Returns:
        :class:`Trajectory` of shape ``(T, ...)`` per field.

    Example:
        >>> import jax, jax.numpy as jnp, qep_jax
        >>> jax.config.update("jax_enable_x64", True)
        >>> model = qep_jax.SpinGORM(n_levels=20, delta=0.1, coupling_strength=0.1, beta=10.0)
        >>> system = model.open_system(qep_jax.goe(jax.random.key(0), 20))
        >>> traj = qep_jax.evolve(system, jnp.linspace(0.0, 50.0, 11))
        >>> traj.entropy_production.shape
        (11,)
    """
    if not isinstance(open_system, OpenSystem):
        raise InputError(f"open_system must be a qep_jax.OpenSystem, got {type(open_system).__name__}.")
    if open_system.coupling.ndim != 2:
        raise InputError(f"open_system is a batch of systems (coupling has shape {open_system.coupling.shape}); "
                         f"evolve takes one: map it over the batch, e.g. jax.vmap(lambda s: qep_jax.evolve(s, "
                         f"times))(systems).")
    reservoir_entropies = check_flag("reservoir_entropies", reservoir_entropies)
    times = check_times(times, jnp.finfo(open_system.coupling.dtype).dtype)
    warn_if_float32(open_system.coupling.dtype)
    rank = _static_rank(open_system.rho_system)
    rebuilt = _static_rebuilt_entry(open_system.rho_system)
    itemsize = jnp.finfo(open_system.coupling.dtype).bits // 8
    if time_batch_size is None:
        time_batch_size = auto_time_batch_size(
            open_system.dims, times.shape[0], rank, n_observables(open_system, rebuilt), itemsize,
            reservoir_entropies,
        )
    else:
        time_batch_size = check_count("time_batch_size", time_batch_size)
    if reservoir_entropies:  # eigenvalues of the reservoir states, a batch per time chunk
        _linalg.hint_blas_threads(max(open_system.dims[1:]), min(time_batch_size, times.shape[0]))
    return _evolve_jit(
        open_system, times, reservoir_entropies=reservoir_entropies,
        time_batch_size=int(time_batch_size), system_rank=rank, rebuilt_entry=rebuilt,
    )
