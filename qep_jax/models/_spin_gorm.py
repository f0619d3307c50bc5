"""The spin-GORM model of Esposito, Lindenberg & Van den Broeck (2010), eq. 29."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from .._evolve import _evolve_kernel, check_times, plan_batches, warn_if_float32
from .._linalg import hint_blas_threads
from .._open_system import (InputError, OpenSystem, check_count, check_flag, check_matrix, check_overflow,
                             check_precision, check_real_scalar, float_dtype, is_int, numeric)
from .._propagator_rules import n_series_observables
from .._random import check_key, check_realization_indices, goe
from .._trajectory import Trajectory

# Series the spin-GORM kernel evaluates: the independent entries of rho_s(t) and <H_r>.
N_SERIES = n_series_observables(2, 1, rebuilt_entry=0)  # the spin starts in |0>: rebuild p_0

DEFAULT_MEMORY_BUDGET = 2 * 2**30


def check_parameters(params: dict) -> None:
    """Real scalars, finite, and finite in the precision they will be stored in (1e39 is inf in
    float32); traced ones by shape and dtype."""
    for name, value in params.items():
        check_real_scalar(name, value)
        check_overflow(name, value, jnp.result_type(value, float))


def check_model_matrix(name: str, x, n: int):
    """A GOE draw ``(N, N)``: numbers, the right shape (traced too: jit built an inconsistent
    system from a wrong-size traced ``x``), finite and symmetric when concrete."""
    x = numeric(name, x)
    if x.shape != (n, n):
        raise InputError(f"{name} has shape {x.shape}, expected ({n}, {n}) = (n_levels, n_levels).")
    return check_matrix(name, x)


def _pauli(dtype):
    # Basis (|0>, |1>) with sigma_z |0> = -|0>: index 0 is the lower level.
    sigma_z = jnp.diag(jnp.array([-1.0, 1.0], dtype))
    sigma_x = jnp.array([[0.0, 1.0], [1.0, 0.0]], dtype)
    return sigma_z, sigma_x


@jax.tree_util.register_pytree_with_keys_class
class SpinGORM:
    """Spin coupled to a Gaussian-orthogonal random-matrix reservoir (frozen pytree).

    ``H = (delta/2) sigma_z + H_r + coupling_strength sigma_x (x) X / sqrt(8 N)`` with
    ``H_r = diag(linspace(-1/2, 1/2, N))``, ``X`` from :func:`qep_jax.goe`, the spin initially
    in its lower level ``|0>`` (``sigma_z |0> = -|0>``, basis index 0) and the reservoir canonical
    at ``beta``.

    Args:
        n_levels: reservoir dimension ``N >= 2`` (static).
        delta: spin splitting ``Delta``.
        coupling_strength: ``lambda``.
        beta: inverse temperature.

    Example:
        >>> import jax, jax.numpy as jnp, qep_jax
        >>> jax.config.update("jax_enable_x64", True)
        >>> model = qep_jax.SpinGORM(n_levels=50, delta=0.1, coupling_strength=0.1, beta=10.0)
        >>> traj = model.simulate(jax.random.key(0), jnp.linspace(0, 100, 5), n_realizations=8)
        >>> traj.entropy_production.shape
        (8, 5)
    """

    __slots__ = ("n_levels", "delta", "coupling_strength", "beta")

    def __init__(self, n_levels: int, delta, coupling_strength, beta):
        if not is_int(n_levels) or n_levels < 2:
            raise InputError(f"n_levels={n_levels!r} must be an int >= 2 (reservoir levels from -1/2 to 1/2).")
        params = {"delta": delta, "coupling_strength": coupling_strength, "beta": beta}
        check_parameters(params)
        object.__setattr__(self, "n_levels", int(n_levels))
        # Python numbers take JAX's default float; NumPy/JAX float32 scalars keep float32.
        for name, value in params.items():
            object.__setattr__(self, name, jnp.asarray(value, dtype=jnp.result_type(value, float)))
        check_precision(self.dtype, "delta, coupling_strength and beta")

    def __setattr__(self, name, value):
        raise AttributeError("SpinGORM is immutable; build a new one.")

    def tree_flatten_with_keys(self):
        names = ("delta", "coupling_strength", "beta")
        return [(jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in names], self.n_levels

    @classmethod
    def tree_unflatten(cls, n_levels, children):
        obj = object.__new__(cls)
        object.__setattr__(obj, "n_levels", n_levels)
        for name, value in zip(("delta", "coupling_strength", "beta"), children):
            object.__setattr__(obj, name, value)
        return obj

    def __repr__(self) -> str:
        return (f"SpinGORM(n_levels={self.n_levels}, delta={self.delta}, "
                f"coupling_strength={self.coupling_strength}, beta={self.beta})")

    @property
    def dtype(self):
        return jnp.result_type(self.delta, self.coupling_strength, self.beta)

    def reservoir_energies(self) -> Array:
        """``(N,)`` equally spaced levels from -1/2 to +1/2 (endpoints included)."""
        return jnp.linspace(-0.5, 0.5, self.n_levels, dtype=self.dtype)

    def open_system(self, x: Array) -> OpenSystem:
        """The problem description for one GOE matrix ``x`` ``(N, N)``."""
        n = self.n_levels
        x = check_model_matrix("x", x, n)
        dtype = jnp.result_type(self.dtype, float_dtype(x))
        check_overflow("x", x, dtype)
        sigma_z, sigma_x = _pauli(dtype)
        coupling_matrix = jnp.asarray(x, dtype) / jnp.sqrt(jnp.asarray(8.0 * n, dtype))
        return OpenSystem(
            h_system=self.delta / 2 * sigma_z,
            h_reservoirs=jnp.diag(self.reservoir_energies().astype(dtype)),
            betas=self.beta,
            coupling=self.coupling_strength * jnp.kron(sigma_x, coupling_matrix),
            rho_system=jnp.diag(jnp.array([1.0, 0.0], dtype)),
            diagonal_reservoirs=True,  # equally spaced levels, diag by construction
        )

    def simulate(
        self,
        key: Array,
        times,
        n_realizations: int,
        *,
        reservoir_entropies: bool = True,
        batch_size: int | None = None,
        time_batch_size: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        first_realization: int = 0,
    ) -> Trajectory:
        """Evolve ``n_realizations`` independent realizations; realization ``i`` uses the GOE matrix
        ``goe(fold_in(key, i), n_levels)`` (drawn in float64 and rounded for a float32 model when x64 is on).

        Realizations are processed ``batch_size`` at a time (``jax.lax.map``), so memory is bounded
        by the batch, not by ``n_realizations``; results do not depend on the batch size.

        Args:
            key: one ``jax.random`` key, e.g. ``jax.random.key(seed)``.
            times: ``(T,)`` time points.
            n_realizations: number of realizations.
            reservoir_entropies: see :func:`qep_jax.evolve`.
            batch_size: realizations evaluated together; default from ``memory_budget``, on the
                CPU also at most what stays in cache (2-8 here; larger batches ran slower).
            time_batch_size: see :func:`qep_jax.evolve`.
            memory_budget: bytes the batch may use (estimate), a positive int of bytes (not a
                string such as the CLI's '2GiB'); a run whose single
                realization does not fit raises :class:`qep_jax.InputError`.
            first_realization: index of the first realization (for continuing an ensemble);
                ``first_realization + n_realizations <= 2**32`` (``2**31`` without x64): ``fold_in``
                keeps 32 bits of the index.

        Returns:
            :class:`Trajectory` with a leading ``(n_realizations,)`` axis on every field.
        """
        check_key(key)
        n_realizations = check_count("n_realizations", n_realizations)
        first_realization = check_count("first_realization", first_realization, minimum=0)
        check_realization_indices(first_realization, n_realizations)
        reservoir_entropies = check_flag("reservoir_entropies", reservoir_entropies)
        memory_budget = check_count("memory_budget", memory_budget)
        times = check_times(times, self.dtype)
        warn_if_float32(self.dtype)
        itemsize = jnp.finfo(self.dtype).bits // 8
        time_batch_size, batch_size = plan_batches((2, self.n_levels), times.shape[0], n_realizations, N_SERIES,
                                                   itemsize, reservoir_entropies, time_batch_size, batch_size,
                                                   memory_budget)
        hint_blas_threads(2 * self.n_levels, batch_size)
        if reservoir_entropies:
            hint_blas_threads(self.n_levels, time_batch_size)
        return _simulate_jit(
            self, key, times, jnp.asarray(first_realization), n_realizations=int(n_realizations),
            reservoir_entropies=reservoir_entropies, batch_size=batch_size, time_batch_size=time_batch_size,
        )


def realization_matrix(key: Array, index, n_levels: int, dtype) -> Array:
    """The GOE matrix ``(N, N)`` of realization ``index``: ``goe(fold_in(key, index), N)`` drawn at
    JAX's default float, then cast to ``dtype``.

    With x64 on, a float32 run thus uses the float64 run's matrices rounded, and the precisions
    compare realization by realization. ``simulate`` and the ensemble runner share this definition.
    """
    return goe(jax.random.fold_in(key, index), n_levels).astype(dtype)


@functools.partial(
    jax.jit, static_argnames=("n_realizations", "reservoir_entropies", "batch_size", "time_batch_size")
)
def _simulate_jit(model, key, times, first, *, n_realizations, reservoir_entropies, batch_size, time_batch_size):
    def one(i):
        x = realization_matrix(key, i, model.n_levels, model.dtype)
        return _evolve_kernel(model.open_system(x), times, reservoir_entropies=reservoir_entropies,
                              time_batch_size=time_batch_size, system_rank=1, rebuilt_entry=0)

    # The whole realization (draw included) is checkpointed: a gradient of an ensemble mean stores
    # only the index per realization. The kernel's own checkpoint stored its input system, two
    # D x D matrices per realization (grad memory grew 6.7 -> 14.2 MiB from R = 2 to 32 at D = 128).
    return jax.lax.map(jax.checkpoint(one), first + jnp.arange(n_realizations), batch_size=batch_size)
