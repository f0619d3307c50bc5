"""Driving protocols: control amplitudes ``u(t)`` of shape ``(n_controls,)`` over ``0 <= t <= duration``.

One file per family. A protocol is a frozen pytree whose array leaves are the differentiable
parameters; :func:`qep_jax.drive` propagates an :class:`qep_jax.OpenSystem` under it.
"""

from ._fourier import FourierRamp as FourierRamp
from ._piecewise_constant import PiecewiseConstant as PiecewiseConstant

__all__ = ["FourierRamp", "PiecewiseConstant"]
