"""Smooth ramp with fixed endpoints plus a small sine basis: parameters theta = coefficients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from .._open_system import InputError, check_count
from ._piecewise_constant import PiecewiseConstant
from ._validate import as_real, positive, real_array, register_frozen, sequences_as_arrays


@dataclasses.dataclass(frozen=True)
class FourierRamp:
    """``u_j(t) = start_j + (end_j - start_j) s + sum_n coefficients[j, n] sin((n + 1) pi s)``, ``s = t / duration``.

    The sine terms vanish at both ends, so every ``coefficients`` keeps the endpoints
    ``u(0) = start`` and ``u(duration) = end``; zero coefficients give the linear ramp.
    All fields are differentiable (``jax.grad`` with respect to ``coefficients`` optimizes the shape).

    Fields:
        duration: ``()`` positive total time ``tau``.
        start: ``(n_controls,)`` ``u(0)``.
        end: ``(n_controls,)`` ``u(tau)``.
        coefficients: ``(n_controls, n_modes)`` sine amplitudes (``n_modes >= 0``).

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> p = qep_jax.FourierRamp(2.0, jnp.array([0.0]), jnp.array([1.0]), jnp.zeros((1, 3)))
        >>> p.values(1.0).tolist()  # zero coefficients: the linear ramp, halfway at tau / 2
        [0.5]
    """

    duration: Array
    start: Array
    end: Array
    coefficients: Array

    def __post_init__(self):
        sequences_as_arrays(self, ("duration", "start", "end", "coefficients"))
        real_array("duration", self.duration, 0)
        positive("duration", self.duration)
        real_array("start", self.start, 1)
        real_array("end", self.end, 1)
        real_array("coefficients", self.coefficients, 2)
        n = jnp.shape(self.start)[0]
        if jnp.shape(self.end) != (n,) or jnp.shape(self.coefficients)[0] != n:
            raise InputError(
                f"start {jnp.shape(self.start)}, end {jnp.shape(self.end)} and coefficients "
                f"{jnp.shape(self.coefficients)} must agree on n_controls (shapes (n,), (n,), (n, n_modes))."
            )
        dtype = jnp.result_type(self.duration, self.start, self.end, self.coefficients, float)
        for name in ("duration", "start", "end", "coefficients"):
            object.__setattr__(self, name, as_real(name, getattr(self, name), dtype))

    @property
    def n_controls(self) -> int:
        return int(self.start.shape[0])

    @property
    def n_modes(self) -> int:
        return int(self.coefficients.shape[1])

    def values(self, t) -> Array:
        """``u(t)``: ``() -> (n_controls,)``."""
        s = t / self.duration
        modes = jnp.arange(1, self.n_modes + 1, dtype=self.coefficients.dtype)
        return self.start + (self.end - self.start) * s + self.coefficients @ jnp.sin(jnp.pi * modes * s)

    def rates(self, t) -> Array:
        """``du/dt``: ``() -> (n_controls,)`` (forward-mode derivative of :meth:`values`)."""
        return jax.jvp(self.values, (jnp.asarray(t, self.duration.dtype),), (jnp.ones((), self.duration.dtype),))[1]

    def to_piecewise_constant(self, n_steps: int) -> PiecewiseConstant:
        """Midpoint samples of ``u`` on ``n_steps`` equal steps, between zero-length end steps at ``u(0)`` and ``u(tau)``.

        Returns ``n_steps + 2`` steps with durations ``(0, h, ..., h, 0)``, ``h = tau / n_steps``, and
        values ``(u(0), u(h/2), ..., u(tau - h/2), u(tau))``: the zero-length steps are instantaneous
        quenches, so ``H(0)`` and ``H(tau)`` are those of the smooth protocol and the work is referenced
        to them (without them ``W`` and ``dF`` were off by ``O(h)``). The ``n_steps + 3`` recorded times are
        ``0, 0, h, ..., tau, tau``. Against the smooth protocol, ``W``, ``dF``, ``Q``, ``W - dF`` and
        ``rho_s(tau)`` converge at second order, ``O(1/n_steps^2)`` (measured in tests/test_driven.py).
        """
        n_steps = check_count("n_steps", n_steps)
        dt = self.duration / n_steps
        mids = (jnp.arange(n_steps, dtype=self.duration.dtype) + 0.5) * dt
        samples = jax.vmap(self.values)(mids)
        values = jnp.concatenate([self.start[None], samples, self.end[None]])
        zero = jnp.zeros((1,), self.duration.dtype)
        durations = jnp.concatenate([zero, jnp.full((n_steps,), dt), zero])
        return PiecewiseConstant(durations, values)


register_frozen(FourierRamp, ("duration", "start", "end", "coefficients"))
