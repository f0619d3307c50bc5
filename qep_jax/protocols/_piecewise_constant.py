"""Piecewise-constant protocol: ``u(t) = values[k]`` for ``t_k <= t < t_{k+1}``."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import Array

from .._open_system import InputError
from ._validate import as_real, nonnegative, real_array, register_frozen, sequences_as_arrays


@dataclasses.dataclass(frozen=True)
class PiecewiseConstant:
    """Controls held constant on ``M`` steps: ``u(t) = values[k]`` for ``t_k <= t < t_{k+1}``.

    ``t_0 = 0`` and ``t_{k+1} = t_k + durations[k]``. The Hamiltonian is ``H(values[0])`` at
    ``t = 0`` (the state is prepared with it) and ``H(values[M-1])`` at the final time
    ``t_M`` (no jump after the last step). Work is done only at the ``M - 1`` switching times
    ``t_1 ... t_{M-1}``. A step of zero duration is an instantaneous quench: it only moves the
    Hamiltonian (e.g. a first step of length 0 references the work to ``H(values[0])`` and jumps
    to ``H(values[1])`` at ``t = 0``).

    Fields:
        durations: ``(M,)`` non-negative step lengths.
        values: ``(M, n_controls)`` real control amplitudes.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> p = qep_jax.PiecewiseConstant(jnp.full(4, 0.5), jnp.linspace(0.0, 1.0, 4)[:, None])
        >>> p.switching_times().tolist()
        [0.0, 0.5, 1.0, 1.5, 2.0]
    """

    durations: Array
    values: Array

    def __post_init__(self):
        sequences_as_arrays(self, ("durations", "values"))
        real_array("durations", self.durations, 1)
        nonnegative("durations", self.durations)
        real_array("values", self.values, 2)
        n_rows, n_steps = jnp.shape(self.values)[0], jnp.shape(self.durations)[0]
        if n_rows != n_steps:
            raise InputError(
                f"values has {n_rows} rows but durations has {n_steps} entries; "
                f"give one row of control values per step."
            )
        if n_steps < 1:
            raise InputError("durations is empty; give at least one step.")
        real = jnp.result_type(float)
        for name in ("durations", "values"):
            value = getattr(self, name)
            object.__setattr__(self, name, as_real(name, value, jnp.result_type(value, real)))

    @property
    def n_steps(self) -> int:
        return int(self.durations.shape[0])

    @property
    def n_controls(self) -> int:
        return int(self.values.shape[1])

    @property
    def duration(self) -> Array:
        return jnp.sum(self.durations)

    def switching_times(self) -> Array:
        """``(M + 1,)`` times ``t_0 = 0, ..., t_M``."""
        return jnp.concatenate([jnp.zeros((1,), self.durations.dtype), jnp.cumsum(self.durations)])


register_frozen(PiecewiseConstant, ("durations", "values"))
