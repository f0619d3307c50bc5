"""A spin between two GORM reservoirs (hot and cold): the two-reservoir version of eq. 29."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from .._evolve import _evolve_kernel, check_times, plan_batches, warn_if_float32
from .._linalg import hint_blas_threads
from .._open_system import (InputError, OpenSystem, check_count, check_flag, check_overflow, check_precision,
                             float_dtype, is_int)
from .._propagator_rules import n_series_observables
from .._random import check_key, check_realization_indices, goe
from .._trajectory import Trajectory
from ._spin_gorm import DEFAULT_MEMORY_BUDGET, check_model_matrix, check_parameters

_PARAMS = ("delta", "coupling_strength", "beta_hot", "beta_cold")
# Series the kernel evaluates: the independent entries of rho_s(t) and <H_hot>, <H_cold>.
N_SERIES = n_series_observables(2, 2, rebuilt_entry=0)  # the spin starts in |0>: rebuild p_0


@jax.tree_util.register_pytree_with_keys_class
class SpinTwoGORM:
    """Spin coupled to a hot and a cold GOE reservoir (frozen pytree).

    ``H = (delta/2) sigma_z + H_hot + H_cold + coupling_strength sigma_x (x) (R_hot (x) 1 + 1 (x) R_cold)``,
    ``R_r = X_r / sqrt(8 N)`` with independent :func:`qep_jax.goe` draws, ``H_r = diag(linspace(-1/2, 1/2, N))``,
    spin initially ``|0>`` (lower level, basis index 0), reservoirs canonical at ``beta_hot``, ``beta_cold``.
    Total space ``spin (x) hot (x) cold`` (dimension ``2 N^2``).

    Args:
        n_levels: levels per reservoir ``N >= 2`` (static).
        delta: spin splitting.
        coupling_strength: ``lambda`` (same for both reservoirs).
        beta_hot, beta_cold: inverse temperatures (reservoir 0 and 1 of the :class:`Trajectory`).

    Example:
        >>> import jax, jax.numpy as jnp, qep_jax
        >>> jax.config.update("jax_enable_x64", True)
        >>> model = qep_jax.SpinTwoGORM(n_levels=6, delta=0.25, coupling_strength=0.2, beta_hot=0.5, beta_cold=5.0)
        >>> traj = model.simulate(jax.random.key(0), jnp.linspace(0, 50, 3), n_realizations=2)
        >>> traj.heat.shape
        (2, 3, 2)
    """

    __slots__ = ("n_levels",) + _PARAMS

    def __init__(self, n_levels: int, delta, coupling_strength, beta_hot, beta_cold):
        if not is_int(n_levels) or n_levels < 2:
            raise InputError(f"n_levels={n_levels!r} must be an int >= 2 (levels per reservoir).")
        values = dict(zip(_PARAMS, (delta, coupling_strength, beta_hot, beta_cold)))
        check_parameters(values)
        object.__setattr__(self, "n_levels", int(n_levels))
        # As SpinGORM: Python numbers take JAX's default float; NumPy/JAX float32 scalars keep float32
        # (promoted to the default float, they made a float32 model compute in float64 with x64 on).
        for name, value in values.items():
            object.__setattr__(self, name, jnp.asarray(value, dtype=jnp.result_type(value, float)))
        # float16 is refused, as SpinGORM refuses it (promoted, the run went on with the rounded values:
        # D_iS off by 4e-4 at N = 3).
        check_precision(self.dtype, "delta, coupling_strength, beta_hot and beta_cold")

    def __setattr__(self, name, value):
        raise AttributeError("SpinTwoGORM is immutable; build a new one.")

    def tree_flatten_with_keys(self):
        return [(jax.tree_util.GetAttrKey(n), getattr(self, n)) for n in _PARAMS], self.n_levels

    @classmethod
    def tree_unflatten(cls, n_levels, children):
        obj = object.__new__(cls)
        object.__setattr__(obj, "n_levels", n_levels)
        for name, value in zip(_PARAMS, children):
            object.__setattr__(obj, name, value)
        return obj

    def __repr__(self) -> str:
        return (f"SpinTwoGORM(n_levels={self.n_levels}, delta={self.delta}, coupling_strength="
                f"{self.coupling_strength}, beta_hot={self.beta_hot}, beta_cold={self.beta_cold})")

    @property
    def dtype(self):
        return jnp.result_type(*(getattr(self, n) for n in _PARAMS))

    def draw(self, key: Array) -> tuple[Array, Array]:
        """The two GOE matrices ``(x_hot, x_cold)``, each ``(N, N)``, of the realization with key ``key``."""
        check_key(key)
        k_hot, k_cold = jax.random.split(key)
        # Drawn at JAX's default float and cast, as SpinGORM's realization_matrix: a float32 run uses
        # the float64 run's matrices rounded.
        return goe(k_hot, self.n_levels).astype(self.dtype), goe(k_cold, self.n_levels).astype(self.dtype)

    def open_system(self, x_hot: Array, x_cold: Array) -> OpenSystem:
        """The problem description for one pair of GOE matrices, each ``(N, N)``."""
        n = self.n_levels
        x_hot, x_cold = check_model_matrix("x_hot", x_hot, n), check_model_matrix("x_cold", x_cold, n)
        dtype = jnp.result_type(self.dtype, float_dtype(x_hot), float_dtype(x_cold))
        check_overflow("x_hot", x_hot, dtype)
        check_overflow("x_cold", x_cold, dtype)
        scale = jnp.sqrt(jnp.asarray(8.0 * n, dtype))
        eye = jnp.eye(n, dtype=dtype)
        bath = jnp.kron(jnp.asarray(x_hot, dtype) / scale, eye) + jnp.kron(eye, jnp.asarray(x_cold, dtype) / scale)
        sigma_x = jnp.array([[0.0, 1.0], [1.0, 0.0]], dtype)
        h_r = jnp.diag(jnp.linspace(-0.5, 0.5, n, dtype=dtype))
        return OpenSystem(
            h_system=self.delta / 2 * jnp.diag(jnp.array([-1.0, 1.0], dtype)),
            h_reservoirs=(h_r, h_r),
            betas=jnp.stack([self.beta_hot, self.beta_cold]),
            coupling=self.coupling_strength * jnp.kron(sigma_x, bath),
            rho_system=jnp.diag(jnp.array([1.0, 0.0], dtype)),
            diagonal_reservoirs=True,  # equally spaced levels, diag by construction
        )

    def simulate(self, key: Array, times, n_realizations: int, *, reservoir_entropies: bool = True,
                 batch_size: int | None = None, time_batch_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, first_realization: int = 0) -> Trajectory:
        """Evolve ``n_realizations`` realizations; realization ``i`` uses ``self.draw(fold_in(key, i))``.

        As :meth:`SpinGORM.simulate`: realizations are processed ``batch_size`` at a time
        (``jax.lax.map``), time points ``time_batch_size`` at a time, so memory is bounded by the
        batches, not by ``n_realizations`` or ``T``; a gradient keeps one realization's
        intermediates at a time. Results do not depend on either batch size.

        Args:
            key: one ``jax.random`` key, e.g. ``jax.random.key(seed)``.
            times: ``(T,)`` time points.
            n_realizations: number of realizations.
            reservoir_entropies: see :func:`qep_jax.evolve`.
            batch_size: realizations evaluated together; default from ``memory_budget``, on the
                CPU also at most what stays in cache.
            time_batch_size: see :func:`qep_jax.evolve` (default: batches of at most 64 MiB).
            memory_budget: bytes the batch may use (estimate), a positive int; a run whose single
                realization does not fit raises :class:`qep_jax.InputError`.
            first_realization: index of the first realization (for continuing an ensemble);
                ``first_realization + n_realizations <= 2**32`` (``2**31`` without x64).

        Returns:
            :class:`Trajectory` with a leading ``(n_realizations,)`` axis (``K = 2``: hot, cold).
        """
        check_key(key)
        n_realizations = check_count("n_realizations", n_realizations)
        first_realization = check_count("first_realization", first_realization, minimum=0)
        check_realization_indices(first_realization, n_realizations)
        reservoir_entropies = check_flag("reservoir_entropies", reservoir_entropies)
        memory_budget = check_count("memory_budget", memory_budget)
        times = check_times(times, self.dtype)
        warn_if_float32(self.dtype)
        time_batch_size, batch_size = plan_batches(
            (2, self.n_levels, self.n_levels), times.shape[0], n_realizations, N_SERIES,
            jnp.finfo(self.dtype).bits // 8, reservoir_entropies, time_batch_size, batch_size, memory_budget,
        )
        hint_blas_threads(2 * self.n_levels**2, batch_size)
        if reservoir_entropies:
            hint_blas_threads(self.n_levels, time_batch_size)
        return _simulate_jit(self, key, times, jnp.asarray(first_realization), n_realizations=n_realizations,
                             reservoir_entropies=reservoir_entropies, batch_size=batch_size,
                             time_batch_size=time_batch_size)


@functools.partial(
    jax.jit, static_argnames=("n_realizations", "reservoir_entropies", "batch_size", "time_batch_size")
)
def _simulate_jit(model, key, times, first, *, n_realizations, reservoir_entropies, batch_size, time_batch_size):
    def one(i):
        system = model.open_system(*model.draw(jax.random.fold_in(key, i)))
        return _evolve_kernel(system, times, reservoir_entropies=reservoir_entropies,
                              time_batch_size=time_batch_size, system_rank=1, rebuilt_entry=0)

    # The whole realization (draw included) is checkpointed, so a gradient of an ensemble mean stores
    # only the index per realization and keeps one realization's intermediates at a time. Checkpointing
    # the kernel alone (_evolve_kernel's checkpoint=True) stored its input system, two D x D matrices
    # per realization: grad temp memory 8.4/9.9/15.9 MiB for R = 2/8/32 at D = 128, batch 1; 8.2 flat here.
    return jax.lax.map(jax.checkpoint(one), first + jnp.arange(n_realizations), batch_size=batch_size)
