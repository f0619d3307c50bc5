"""Ensemble runner: spin-GORM realizations streamed in chunks, sharded over devices, summarised.

Realization ``i`` always uses ``goe(fold_in(key(seed), i), N)``, so the numbers depend only on
the seed and the realization index, never on the chunk size or the number of devices (up to
rounding: how realizations are batched can change the last bits).
Each chunk is evaluated by one jitted ``shard_map``: the chunk's realization indices are split
over a 1-D device mesh and every device ``vmap``s (accelerators) or loops in small batches (CPU)
the single-realization kernel over its part.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._evolve import (
    DEFAULT_TIME_BLOCK_BYTES,
    _evolve_kernel,
    auto_time_batch_size,
    check_times,
    cpu_realization_batch,
    format_bytes as _format_bytes,
    realization_bytes,
    warn_if_float32,
)
from ._interrupt import remember_ctrl_c
from ._linalg import batch_eigh_workers, hint_blas_threads
from ._open_system import InputError, check_flag, is_int
from ._statistics import Moments
from ._trajectory import Trajectory
from .models import SpinGORM
from .models._spin_gorm import N_SERIES, realization_matrix

DEFAULT_MEMORY_BUDGET = 2 * 2**30
# Auto chunking aims at about this many chunks, so progress and resume are fine-grained.
TARGET_CHUNKS = 10
_AXIS = "realization"


class Quantity(NamedTuple):
    """A time series the runner can average: how to get it from one realization, and its meaning."""

    extract: Callable[[Trajectory], jax.Array]  # (T,) or (T, K) for one realization
    per_reservoir: bool
    needs_reservoir_entropies: bool
    units: str
    long_name: str


def _field(name):
    return lambda traj: getattr(traj, name)


def _spin_polarization(traj: Trajectory):
    # Basis index 0 is the lower level, sigma_z = diag(-1, +1).
    return jnp.real(traj.system_state[:, 1, 1] - traj.system_state[:, 0, 0])


NATS = "nats (k_B = 1)"
ENERGY = "energy (hbar = k_B = 1)"
QUANTITIES: dict[str, Quantity] = {
    "entropy_production": Quantity(_field("entropy_production"), False, False, NATS,
                                   "D_iS = D[rho(t) || rho_s(t) x rho_r^eq] (eq. 10)"),
    "entropy_production_open": Quantity(_field("entropy_production_open"), False, False, NATS,
                                        "D_iS' = D[rho_s(0)||rho_s^eq] - D[rho_s(t)||rho_s^eq] (eq. 25)"),
    "entropy_production_balance": Quantity(_field("entropy_production_balance"), False, False, NATS,
                                           "dS - D_eS (eq. 7)"),
    "entropy_flow": Quantity(_field("entropy_flow"), False, False, NATS, "D_eS = sum_r beta_r Q_r (eq. 8)"),
    "system_entropy": Quantity(_field("system_entropy"), False, False, NATS, "S = -Tr rho_s ln rho_s"),
    "system_energy": Quantity(_field("system_energy"), False, False, ENERGY, "<H_s>_t"),
    "interaction_energy": Quantity(_field("interaction_energy"), False, False, ENERGY, "<V>_t"),
    "spin_polarization": Quantity(_spin_polarization, False, False, "1",
                                  "<sigma_z>_t = rho_s[1,1] - rho_s[0,0]"),
    "heat": Quantity(_field("heat"), True, False, ENERGY, "Q_r = <H_r>_0 - <H_r>_t (eq. 9)"),
    "reservoir_energy": Quantity(_field("reservoir_energy"), True, False, ENERGY, "<H_r>_t"),
    "mutual_information": Quantity(_field("mutual_information"), False, True, NATS,
                                   "I(s:r) = S + S_r - S_tot = -S_c for one reservoir"),
    "correlation_entropy": Quantity(_field("correlation_entropy"), False, True, NATS,
                                    "S_c = S_tot - S - sum_r S_r (eq. 12)"),
    "reservoir_entropy": Quantity(_field("reservoir_entropy"), True, True, NATS,
                                  "S_r = -Tr rho_r ln rho_r (eq. 13)"),
    "reservoir_relative_entropy": Quantity(_field("reservoir_relative_entropy"), True, True, NATS,
                                           "D[rho_r(t) || rho_r^eq] (eq. 17)"),
}
DEFAULT_QUANTITIES = (
    "entropy_production",
    "entropy_production_open",
    "entropy_flow",
    "system_entropy",
    "spin_polarization",
    "heat",
    "mutual_information",
    "reservoir_relative_entropy",
)


@dataclasses.dataclass(frozen=True)
class ChunkResult:
    """Statistics of realizations ``start <= i < stop`` (one persisted unit of work).

    Fields:
        start, stop: realization index range.
        moments: quantity -> :class:`Moments` with ``mean``/``m2`` of shape ``(T,)`` or ``(T, K)``.
        series: quantity -> ``(stop - start, T[, K])`` per-realization values, or ``None``.
    """

    start: int
    stop: int
    moments: dict
    series: dict | None = None


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """Ensemble statistics of a spin-GORM run (units hbar = k_B = 1).

    Fields:
        times: ``(T,)``.
        parameters: run parameters (n_levels, delta, coupling_strength, beta, n_realizations,
            seed, precision, quantities, keep_realizations).
        mean, variance, standard_error: quantity -> ``(T,)`` or ``(T, K)`` (K = 1 reservoir);
            the variance is the sample variance (``R - 1`` in the denominator), so with one
            realization it and the standard error are NaN.
        series: quantity -> ``(R, T[, K])`` per-realization values, or ``None``.
        info: how it ran (device, device_count, process_count, chunk_size, runtime_s,
            resumed_realizations). A result read from a file (:func:`load_run`, or ``run_to_file``
            on a finished output) has only device, device_count and the qep_jax/jax/jaxlib versions:
            a file can hold chunks of several sessions, so it records no single run time.
    """

    times: np.ndarray
    parameters: dict
    mean: dict
    variance: dict
    standard_error: dict
    series: dict | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def n_realizations(self) -> int:
        return int(self.parameters["n_realizations"])


def _check_int(name, value, minimum):
    if not is_int(value) or value < minimum:
        raise InputError(f"{name}={value!r} must be an int >= {minimum}.")
    return int(value)


# jax.random.key converts the seed to a C long: 2**63 and above raise OverflowError. Without x64
# it keeps only the low 32 bits, so seed 2**32 would silently repeat seed 0.
SEED_LIMIT = 2**63


def check_seed(seed, name: str = "seed") -> int:
    """A seed ``jax.random.key`` takes without overflow or silent truncation: ``0 <= seed < 2**63``."""
    seed = _check_int(name, seed, 0)
    if seed >= SEED_LIMIT:
        raise InputError(f"{name}={seed} is too large; use 0 <= {name} < 2**63 = {SEED_LIMIT}.")
    if seed >= 2**32 and not jax.config.jax_enable_x64:
        raise InputError(f"{name}={seed} >= 2**32 needs jax.config.update('jax_enable_x64', True): without "
                         f"it JAX keeps only the low 32 bits of the seed (2**32 would repeat seed 0).")
    return seed


def check_quantities(quantities) -> tuple[str, ...]:
    """Validate quantity names; returns them as a tuple without duplicates (order kept); ``None``
    is the default set."""
    if quantities is None:
        return DEFAULT_QUANTITIES
    if isinstance(quantities, str):
        quantities = [quantities]
    try:
        quantities = list(quantities)
    except TypeError:
        raise InputError(f"quantities must be a list of names, got {quantities!r}; e.g. ['entropy_production'].") from None
    out = []
    for q in quantities:
        if not isinstance(q, str) or q not in QUANTITIES:
            raise InputError(f"unknown quantity {q!r}; choose from {', '.join(QUANTITIES)}.")
        if q not in out:
            out.append(q)
    if not out:
        raise InputError("quantities is empty; request at least one, e.g. entropy_production.")
    return tuple(out)


def precision_name(dtype) -> str:
    return "float64" if jnp.finfo(dtype).bits == 64 else "float32"


class MemoryPlan(NamedTuple):
    """How a run uses memory: bytes per realization, time batch and realizations per device."""

    realization_bytes: int  # one realization's working memory and its returned series
    time_batch_size: int
    per_device: int  # realizations one device may hold in a chunk within the budget
    live_batch: int | None  # CPU: realizations evaluated at once (lax.map batch); None: all of them (vmap)
    output_bytes: int  # of realization_bytes, the returned series (kept for every realization of a chunk)


# How errors name the arguments: the library's keywords; the CLI passes its flags instead.
ARGUMENT_NAMES = {
    "memory_budget": "memory_budget",
    "chunk_size": "chunk_size",
    "n_levels": "n_levels",
    "n_realizations": "n_realizations",
    "times": "times",
    "quantities": "quantities",
    "keep_realizations": "keep_realizations=True",
}


def _realization_bytes(n_levels, n_times, itemsize, entropies, time_batch, n_values):
    dims = (2, n_levels)
    # system_rank = 1: pure initial spin.
    kernel = realization_bytes(dims, n_times, system_rank=1, n_observables=N_SERIES, itemsize=itemsize,
                               reservoir_entropies=entropies, time_batch_size=time_batch)
    return kernel + _output_bytes(n_times, n_values)


def _output_bytes(n_times: int, n_values: int) -> int:
    """A realization's returned series: the device's buffer and the host's float64 copy."""
    return 2 * n_values * n_times * 8


def _need(n_levels, n_times, itemsize, entropies, n_values, memory_budget) -> tuple[int, int]:
    """``(bytes, time batch)`` of one realization under ``memory_budget``, which sets the time block."""
    block = min(DEFAULT_TIME_BLOCK_BYTES, max(1, memory_budget // 4))
    time_batch = auto_time_batch_size((2, n_levels), n_times, 1, N_SERIES, itemsize, entropies,
                                      block_bytes=block)
    return _realization_bytes(n_levels, n_times, itemsize, entropies, time_batch, n_values), time_batch


def _smallest_fitting_budget(n_levels, n_times, itemsize, entropies, n_values, need: int) -> int:
    """The smallest budget that holds one realization: the need grows with the budget (its time
    block does), so the need under the current budget was refused again when suggested below 256 MiB."""
    budget = need
    for _ in range(64):  # the block is capped, so this settles in a few steps
        grown = _need(n_levels, n_times, itemsize, entropies, n_values, budget)[0]
        if grown <= budget:
            return budget
        budget = grown
    return budget


def _largest_fitting_n_levels(n_levels, n_times, itemsize, entropies, n_values, memory_budget) -> int | None:
    """Largest N < n_levels whose realization fits, by bisection (the estimate grows with N); None if none.

    Scanning every N took 26 s for n_levels = 2e7; bisection needs about 25 estimates. Each N is
    estimated exactly as :func:`plan_memory` will (same time batch), so the suggestion is accepted.
    """
    def fits(n):
        return _need(n, n_times, itemsize, entropies, n_values, memory_budget)[0] <= memory_budget

    if n_levels <= 2 or not fits(2):
        return None
    lo, hi = 2, n_levels  # fits(lo) holds; hi is not tested (the caller's N does not fit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def kept_series_bytes(n_realizations: int, n_times: int, quantities) -> int:
    """Host bytes of ``keep_realizations``: every chunk's float64 series, plus the final concatenated copy."""
    return 2 * n_realizations * n_times * len(quantities) * 8


def plan_memory(n_levels: int, n_times: int, quantities, itemsize: int, memory_budget: int,
                names: dict = ARGUMENT_NAMES, *, vectorized: bool = False) -> MemoryPlan:
    """Memory estimate from the core's ``realization_bytes``; raises ``InputError`` if nothing fits.

    ``vectorized``: a device evaluates its realizations of a chunk together (``vmap``, accelerators).
    On the CPU (``False``) it loops over them in batches of :func:`cpu_realization_batch`, so only
    that many realizations' working memory is live, plus every realization's returned series.
    """
    entropies = any(QUANTITIES[q].needs_reservoir_entropies for q in quantities)
    n_values = len(quantities)
    per, time_batch = _need(n_levels, n_times, itemsize, entropies, n_values, memory_budget)
    if per > memory_budget:
        # What would fit: the budget this run needs, or the largest N within this budget.
        smallest = _smallest_fitting_budget(n_levels, n_times, itemsize, entropies, n_values, per)
        largest = _largest_fitting_n_levels(n_levels, n_times, itemsize, entropies, n_values, memory_budget)
        alt = f" or {names['n_levels']} <= {largest}" if largest else ""
        raise InputError(
            f"one realization needs about {_format_bytes(per, up=True)} but {names['memory_budget']} is "
            f"{_format_bytes(memory_budget)}; use {names['memory_budget']} >= "
            f"{_format_bytes(smallest, up=True)}{alt}."
        )
    out = _output_bytes(n_times, n_values)
    if vectorized:
        return MemoryPlan(per, time_batch, int(memory_budget // per), None, out)
    batch = cpu_realization_batch(per)
    if batch * per <= memory_budget:
        # batch * per + (p - batch) * out <= budget
        return MemoryPlan(per, time_batch, batch + int((memory_budget - batch * per) // out), batch, out)
    fits = int(memory_budget // per)  # fewer than a batch fit: they are the batch
    return MemoryPlan(per, time_batch, fits, fits, out)


def chunk_bytes(plan: MemoryPlan, per_device: int) -> int:
    """Estimated bytes one device needs for a chunk of ``per_device`` realizations."""
    live = per_device if plan.live_batch is None else min(per_device, plan.live_batch)
    return live * plan.realization_bytes + (per_device - live) * plan.output_bytes


def check_memory(model: SpinGORM, n_times: int, n_realizations: int, quantities, keep_realizations: bool,
                 chunk_size: int | None, memory_budget: int, n_devices: int,
                 names: dict = ARGUMENT_NAMES, *, vectorized: bool = False) -> MemoryPlan:
    """Refuse a run that does not fit ``memory_budget``: one realization (per device), the chunk size,
    and with ``keep_realizations`` every series, which stay in host memory until the end (on the
    CPU, the host is the device: the series and the chunk share the budget).

    ``names`` says how the messages name the arguments (the CLI passes its flags); ``vectorized``
    as in :func:`plan_memory`.
    """
    itemsize = jnp.finfo(model.dtype).bits // 8
    kept = kept_series_bytes(n_realizations, n_times, quantities) if keep_realizations else 0
    if kept > memory_budget:
        raise InputError(
            f"{names['keep_realizations']} holds {n_realizations} realizations x {n_times} times x "
            f"{len(quantities)} quantities in memory until the end (about {_format_bytes(kept, up=True)} with the "
            f"final copy), more than {names['memory_budget']} {_format_bytes(memory_budget)}; raise "
            f"{names['memory_budget']}, lower {names['n_realizations']}, {names['times']} or "
            f"{names['quantities']}, or drop {names['keep_realizations'].split('=')[0]}."
        )
    chunk_budget = memory_budget if vectorized else memory_budget - kept
    try:
        plan = plan_memory(model.n_levels, n_times, quantities, itemsize, chunk_budget, names, vectorized=vectorized)
    except InputError:
        if not kept:
            raise
        per = _need(model.n_levels, n_times, itemsize,
                    any(QUANTITIES[q].needs_reservoir_entropies for q in quantities), len(quantities),
                    memory_budget)[0]
        raise InputError(
            f"{names['keep_realizations']} holds about {_format_bytes(kept, up=True)} of "
            f"{names['memory_budget']} {_format_bytes(memory_budget)} in host memory, which leaves less "
            f"than one realization's {_format_bytes(per, up=True)} for the computation; raise "
            f"{names['memory_budget']} to at least {_format_bytes(kept + per, up=True)}, lower "
            f"{names['n_realizations']}, or drop {names['keep_realizations'].split('=')[0]}."
        ) from None
    # The runner never makes a chunk larger than the run: a chunk_size above n_realizations is not a need.
    per_device = None if chunk_size is None else math.ceil(min(chunk_size, n_realizations) / n_devices)
    if per_device is not None and per_device > plan.per_device:
        need = chunk_bytes(plan, per_device) + (kept if not vectorized else 0)
        raise InputError(
            f"{names['chunk_size']} {chunk_size} needs about {_format_bytes(need, up=True)} per device, more than "
            f"{names['memory_budget']} {_format_bytes(memory_budget)}; use {names['chunk_size']} <= "
            f"{plan.per_device * n_devices} or a larger {names['memory_budget']}."
        )
    return plan


@functools.lru_cache(maxsize=32)
def _chunk_function(mesh: Mesh, n_levels: int, quantities: tuple, entropies: bool, time_batch: int,
                    vectorize: bool, cpu_batch: int):
    """Jitted ``(model, key, times, indices (C,)) -> {q: (C, T[, K])}``, ``indices`` sharded on the mesh.

    ``vectorize``: ``vmap`` the device's realizations (accelerators) or loop over them with
    ``lax.map`` in batches of ``cpu_batch`` (CPU: a small batch keeps the working set in cache and
    gives the batched host ``eigh`` of ``_linalg`` a batch to spread over the cores; jaxlib's own
    batched CPU ``eigh``, which deadlocked here, is never called).
    """

    def local(model, key, times, indices):
        def one(i):
            x = realization_matrix(key, i, n_levels, model.dtype)
            traj = _evolve_kernel(model.open_system(x), times, reservoir_entropies=entropies,
                                  time_batch_size=time_batch, system_rank=1, rebuilt_entry=0)
            return {q: QUANTITIES[q].extract(traj) for q in quantities}

        return jax.vmap(one)(indices) if vectorize else jax.lax.map(one, indices, batch_size=cpu_batch)

    spec = PartitionSpec(_AXIS)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(), spec),
                            out_specs=spec)
    return jax.jit(sharded)


def _vectorizes(device) -> bool:
    """Whether ``device`` evaluates a chunk's realizations together (``vmap``): accelerators do;
    the CPU loops over them (see :func:`_chunk_function`)."""
    return device.platform != "cpu"


def default_chunk_size(n_realizations: int, n_devices: int, per_device_cap: int, granule: int) -> int:
    """Realizations per chunk when the user gives none.

    About ``n_realizations / TARGET_CHUNKS`` (fine-grained progress and resume), at most
    ``per_device_cap`` per device (memory), a multiple of ``granule`` per device, and spread
    evenly over the chunks. On the CPU the granule is the number of host threads a batched
    ``eigh`` is split over (the cores when BLAS is pinned to one thread): a shorter batch leaves a
    core idle. Every chunk is padded to the same shape, so a ragged last chunk is computed in
    full and thrown away. With 64 realizations at N = 200 (cheap
    set, 2 cores) chunks of 7 cost 20.7 ms per realization, chunks of 8 16.5 ms.
    """
    step = n_devices * granule
    cap = max(n_devices, per_device_cap * n_devices)
    if cap >= step:
        cap -= cap % step
    wanted = math.ceil(n_realizations / TARGET_CHUNKS)
    chunk = min(cap, step * math.ceil(wanted / step))
    # Even out the chunks: for about as many chunks as that size needs (two fewer to two more),
    # each as small as whole steps allow; keep the count with the least padding, then the nearest.
    n_chunks = math.ceil(n_realizations / chunk)
    best = None
    for n in range(max(1, n_chunks - 2), n_chunks + 3):
        size = min(cap, step * math.ceil(n_realizations / (n * step)))
        padding = math.ceil(n_realizations / size) * size - n_realizations
        if best is None or (padding, abs(n - n_chunks)) < best[0]:
            best = ((padding, abs(n - n_chunks)), size)
    return best[1]


def _missing_ranges(n_realizations: int, completed: Sequence[ChunkResult]) -> list[tuple[int, int]]:
    done = sorted((c.start, c.stop) for c in completed)
    gaps, cursor = [], 0
    for start, stop in done:
        if start < cursor or stop > n_realizations or start >= stop:
            raise InputError(f"completed chunks overlap or lie outside 0..{n_realizations}: {done}.")
        if start > cursor:
            gaps.append((cursor, start))
        cursor = stop
    if cursor < n_realizations:
        gaps.append((cursor, n_realizations))
    return gaps


class _OrderedMerge:
    """Left fold of the chunks' moments in realization order, fed as chunks finish in any order.

    Only a chunk that waits for an earlier one is held: the statistics of every chunk, kept until
    the end, grew as chunks x 2 T x quantities (688 MiB over a 64 MiB budget with 3000 chunks of
    1000 times), uncounted. The order is that of the old sort-then-fold, so a resumed run's numbers
    are bit-identical to an uninterrupted one's.
    """

    def __init__(self, quantities: tuple, keep_realizations: bool):
        self.quantities, self.keep = quantities, keep_realizations
        self.waiting: dict[int, ChunkResult] = {}
        self.cursor, self.moments, self.series = 0, None, []

    def add(self, chunk: ChunkResult) -> None:
        if self.keep and chunk.series is None:
            raise InputError("keep_realizations=True but some completed chunks carry no per-realization series.")
        self.waiting[chunk.start] = chunk
        while self.cursor in self.waiting:
            c = self.waiting.pop(self.cursor)
            self.moments = dict(c.moments) if self.moments is None else {
                q: self.moments[q].merge(c.moments[q]) for q in self.quantities}
            if self.keep:
                self.series.append(c.series)
            self.cursor = c.stop

    def result(self, n_realizations: int) -> tuple[dict, dict | None]:
        assert self.cursor == n_realizations and not self.waiting, (self.cursor, sorted(self.waiting))
        moments = {q: self.moments[q] for q in self.quantities}
        if not self.keep:
            return moments, None
        series = {q: np.concatenate([s[q] for s in self.series], axis=0) for q in self.quantities}
        return moments, series


def _gather(x) -> np.ndarray:
    if jax.process_count() > 1:  # multi-host: every process receives the whole chunk
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def run_ensemble(
    model: SpinGORM,
    times,
    n_realizations: int,
    *,
    seed: int = 0,
    quantities: Sequence[str] = DEFAULT_QUANTITIES,
    keep_realizations: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    devices: Sequence | None = None,
    completed: Sequence[ChunkResult] = (),
    on_chunk: Callable[[ChunkResult], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EnsembleResult:
    """Mean, variance and standard error of spin-GORM time series over ``n_realizations`` realizations.

    ``mean_q(t) = (1/R) sum_i q_i(t)`` with realization ``i`` built from
    ``goe(fold_in(key(seed), i), N)`` — the same realizations as :meth:`SpinGORM.simulate`.

    Args:
        model: the :class:`SpinGORM` (its dtype sets the precision).
        times: ``(T,)`` time points.
        n_realizations: ``R``.
        seed: int, ``0 <= seed < 2**63`` (``< 2**32`` without x64), ``key = jax.random.key(seed)``.
        quantities: names from :data:`QUANTITIES`.
        keep_realizations: also return the ``(R, T[, K])`` per-realization series.
        chunk_size: realizations per chunk (rounded up to a multiple of the device count);
            default :func:`default_chunk_size` (about ``n_realizations / 10``, within ``memory_budget``).
        memory_budget: bytes each device may use for one chunk (estimate, see :func:`plan_memory`;
            XLA's compilation is not counted); with ``keep_realizations`` the series of all
            realizations, held in host memory until the end, must fit it as well, together with
            the chunk on the CPU, where host and device memory are one.
        devices: devices of the 1-D mesh; default all devices (all hosts after
            ``jax.distributed.initialize``).
        completed: chunks already computed (e.g. loaded for a resume); only the rest is evaluated.
        on_chunk: called with each newly finished :class:`ChunkResult` (e.g. to persist it).
        progress: called as ``progress(done, total)`` realizations after each chunk.

    Returns:
        :class:`EnsembleResult`; ``(T,)`` or ``(T, 1)`` arrays per quantity.

    Raises:
        InputError: an argument is invalid, or the run does not fit ``memory_budget``.
        FloatingPointError: a realization gave a NaN or inf (the chunks finished before it are kept).

    Example:
        >>> import jax, qep_jax
        >>> jax.config.update("jax_enable_x64", True)
        >>> model = qep_jax.SpinGORM(n_levels=8, delta=0.1, coupling_strength=0.1, beta=10.0)
        >>> res = qep_jax.run_ensemble(model, [0.0, 10.0], 4, quantities=["entropy_production"])
        >>> res.mean["entropy_production"].shape
        (2,)
    """
    n_realizations, seed, quantities, keep_realizations = check_run_arguments(
        model, n_realizations, seed, quantities, keep_realizations)
    memory_budget = _check_int("memory_budget", memory_budget, 1)
    if chunk_size is not None:
        chunk_size = _check_int("chunk_size", chunk_size, 1)
    dtype = model.dtype
    warn_if_float32(dtype)
    times = np.asarray(check_times(times), dtype=dtype)
    if devices is not None and not isinstance(devices, (list, tuple)):
        raise InputError(f"devices must be a list of devices, got {type(devices).__name__}; e.g. "
                         f"jax.devices()[:1] (or None for all).")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise InputError("devices is empty; pass None for all of JAX's devices, or a list such as jax.devices()[:1].")
    n_dev = len(devices)
    vectorize = _vectorizes(devices[0])
    plan = check_memory(model, times.shape[0], n_realizations, quantities, keep_realizations, chunk_size,
                        memory_budget, n_dev, vectorized=vectorize)
    cpu_batch = plan.live_batch or 1
    if chunk_size is None:
        granule = 1 if vectorize else min(cpu_batch, batch_eigh_workers(2 * model.n_levels))
        chunk_size = default_chunk_size(n_realizations, n_dev, plan.per_device, granule)
    # Every chunk is padded to the same multiple of the device count: one compilation per run.
    chunk_size = n_dev * math.ceil(min(chunk_size, n_realizations) / n_dev)

    mesh = Mesh(np.array(devices), (_AXIS,))
    entropies = any(QUANTITIES[q].needs_reservoir_entropies for q in quantities)
    per_device = chunk_size // n_dev
    cpu_batch = min(per_device, cpu_batch)
    if not vectorize:
        hint_blas_threads(2 * model.n_levels, cpu_batch)
        if entropies:
            hint_blas_threads(model.n_levels, plan.time_batch_size)
    fn = _chunk_function(mesh, model.n_levels, quantities, entropies, plan.time_batch_size, vectorize, cpu_batch)
    key = jax.random.key(seed)
    times_dev = jnp.asarray(times)
    sharding = NamedSharding(mesh, PartitionSpec(_AXIS))

    completed = list(completed)
    gaps = _missing_ranges(n_realizations, completed)
    done = sum(c.stop - c.start for c in completed)
    resumed = done
    merged = _OrderedMerge(quantities, keep_realizations)
    for chunk in completed:
        merged.add(chunk)
    del completed
    if progress is not None:
        progress(done, n_realizations)
    t0 = time.perf_counter()
    with remember_ctrl_c() as ctrl_c:
        for gap_start, gap_stop in gaps:
            for start in range(gap_start, gap_stop, chunk_size):
                stop = min(start + chunk_size, gap_stop)
                # Pad with the last index; padded rows are computed and dropped (static chunk shape).
                idx = np.minimum(np.arange(start, start + chunk_size), stop - 1).astype(np.int64)
                indices = jax.make_array_from_callback(idx.shape, sharding, lambda s, idx=idx: idx[s])
                out = fn(model, key, times_dev, indices)
                values = {q: _gather(out[q])[: stop - start].astype(np.float64) for q in quantities}
                _check_finite(values, start, times)
                chunk = ChunkResult(
                    start, stop, {q: Moments.from_samples(v) for q, v in values.items()},
                    values if keep_realizations else None,
                )
                merged.add(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
                done += stop - start
                if progress is not None:
                    progress(done, n_realizations)
                ctrl_c.check()  # a Ctrl-C Python dropped (see _interrupt) stops here, the chunk kept
    runtime = time.perf_counter() - t0

    moments, series = merged.result(n_realizations)
    parameters = run_parameters(model, times, n_realizations, seed, quantities, keep_realizations)
    info = {
        "device": f"{devices[0].platform}: {devices[0].device_kind}",
        "device_count": n_dev,
        "process_count": jax.process_count(),
        "chunk_size": chunk_size,
        "runtime_s": runtime,
        "resumed_realizations": resumed,
    }
    return EnsembleResult(
        times=times.astype(np.float64),
        parameters=parameters,
        mean={q: m.mean for q, m in moments.items()},
        variance={q: m.variance for q, m in moments.items()},
        standard_error={q: m.standard_error for q, m in moments.items()},
        series=series,
        info=info,
    )


def _check_finite(values: dict, start: int, times: np.ndarray) -> None:
    """Refuse a chunk with a NaN or inf: one would make the whole time point's statistics NaN (or
    inf or NaN depending on the chunking) without a word. Raised before the chunk is kept."""
    for q, v in values.items():
        bad = ~np.isfinite(v)
        if bad.any():
            rows, cols = np.nonzero(bad.reshape(bad.shape[0], bad.shape[1], -1).any(axis=-1))
            realizations = sorted({int(start + r) for r in rows})
            raise FloatingPointError(
                f"{q} is not finite for realization(s) {realizations[:10]}{' ...' if len(realizations) > 10 else ''} "
                f"(first at t = {float(times[cols[0]]):g}); finished chunks are kept. With float32 the "
                f"parameters may overflow it: run in float64 (jax_enable_x64); otherwise please report it "
                f"with the run's parameters."
            )


def check_run_arguments(model, n_realizations, seed, quantities, keep_realizations) -> tuple:
    """``(n_realizations, seed, quantities, keep_realizations)`` checked: what a run is keyed by
    must be valid before it is compared with a finished one (``run_to_file`` took ``seed=0.5`` for
    the finished seed 0 and returned it)."""
    if not isinstance(model, SpinGORM):
        raise InputError(f"model must be a qep_jax.SpinGORM, got {type(model).__name__}.")
    n_realizations = _check_int("n_realizations", n_realizations, 1)
    # Realization i is goe(fold_in(key, i)); fold_in keeps the low 32 bits of i (int32 without x64).
    limit = 2**32 if jax.config.jax_enable_x64 else 2**31
    if n_realizations > limit:
        raise InputError(f"n_realizations={n_realizations} is more than {limit} = 2**{limit.bit_length() - 1}: "
                         f"realization indices beyond it would repeat realizations; use several seeds.")
    return (n_realizations, check_seed(seed), check_quantities(quantities),
            check_flag("keep_realizations", keep_realizations))


def run_parameters(model: SpinGORM, times, n_realizations, seed, quantities, keep_realizations) -> dict:
    """Everything that determines a run's numbers, as JSON-friendly Python scalars and lists."""
    n_realizations, seed, quantities, keep_realizations = check_run_arguments(
        model, n_realizations, seed, quantities, keep_realizations)
    params = {
        "model": "spin_gorm",
        "n_levels": int(model.n_levels),
        "delta": float(model.delta),
        "coupling_strength": float(model.coupling_strength),
        "beta": float(model.beta),
        "times": [float(t) for t in np.asarray(times)],
        "n_realizations": int(n_realizations),
        "seed": int(seed),
        "quantities": list(quantities),
        "precision": precision_name(model.dtype),
        "keep_realizations": bool(keep_realizations),
    }
    if params["precision"] == "float32":
        # Its matrices are float64 draws rounded with x64 on, float32 draws without (realization_matrix):
        # a run must not resume under the other setting.
        params["goe_draw"] = precision_name(jnp.result_type(float))
    return params


def with_precision(model: SpinGORM, precision: str) -> SpinGORM:
    """``model`` with its parameters cast to ``precision`` (``"float64"`` or ``"float32"``).

    float64 needs ``jax_enable_x64``; the cast goes through the pytree so validation is kept.
    """
    if precision not in ("float64", "float32"):
        raise InputError(f"precision={precision!r} must be 'float64' or 'float32'.")
    if precision == "float64" and not jax.config.jax_enable_x64:
        raise InputError("precision='float64' needs jax.config.update('jax_enable_x64', True) at program start.")
    dtype = jnp.dtype(precision)
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype), model)
