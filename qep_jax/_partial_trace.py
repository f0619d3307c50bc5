"""Partial trace over a tensor-product space with static subsystem dimensions.

Validated in Python, computed by a ``jax.jit``-ed core with ``dims`` and ``keep`` static: one
compilation per shape, dtype, ``dims`` and ``keep``, none per new values of ``rho``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._open_system import InputError, float_dtype, is_int, numeric


def _normalise_keep(dims: tuple[int, ...], keep: int | Sequence[int]) -> tuple[int, ...]:
    if is_int(keep) or isinstance(keep, bool):
        keep = (keep,)
    elif isinstance(keep, np.ndarray) and keep.ndim <= 1 and np.issubdtype(keep.dtype, np.integer):
        keep = tuple(int(k) for k in np.atleast_1d(keep))
    elif isinstance(keep, (list, tuple, range)):
        keep = tuple(keep)
    else:  # a float or an array: tuple() raised "not iterable" or took its entries silently
        raise InputError(f"partial_trace: keep={keep!r} must be a subsystem index (int) or a list of them.")
    for k in keep:
        # bool is an int to Python: keep=True silently meant subsystem 1.
        if not is_int(k) or not 0 <= k < len(dims):
            raise InputError(f"partial_trace: keep={keep!r} must hold subsystem indices (ints) in "
                             f"[0, {len(dims)}).")
    keep = tuple(int(k) for k in keep)
    if len(set(keep)) != len(keep):
        raise InputError(f"partial_trace: keep={keep!r} names a subsystem twice.")
    return tuple(sorted(keep))


def partial_trace(rho: Array, dims: Sequence[int], keep: int | Sequence[int]) -> Array:
    """Reduced state ``Tr_{not keep} rho`` on the subsystems listed in ``keep``.

    The total space is ``dims[0] (x) dims[1] (x) ...`` with the first factor slowest (Kronecker
    order). ``dims`` and ``keep`` are static Python ints; index bookkeeping happens before tracing.

    Args:
        rho: ``(..., D, D)`` with ``D = prod(dims)``; integer entries are promoted to the float type,
            bool is refused.
        dims: subsystem dimensions (a sequence of positive ints, e.g. ``(2, 3)``).
        keep: index or indices of the subsystems to keep (returned in increasing order).

    Returns:
        ``(..., d_keep, d_keep)`` with ``d_keep = prod(dims[k] for k in keep)``.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> rho = jnp.kron(jnp.diag(jnp.array([1.0, 0.0])), jnp.eye(3) / 3)
        >>> qep_jax.partial_trace(rho, (2, 3), keep=0)
        Array([[1., 0.], [0., 0.]], ...)
    """
    if is_int(dims):  # tuple(6) said "'int' object is not iterable"
        raise InputError(f"partial_trace: dims={dims!r} must be a sequence of subsystem dimensions, e.g. ({dims},) "
                         f"for a single subsystem.")
    if (isinstance(dims, (str, bytes)) or not isinstance(dims, (Sequence, np.ndarray))
            or (isinstance(dims, np.ndarray) and dims.ndim != 1)):
        raise InputError(f"partial_trace: dims={dims!r} must be a sequence of subsystem dimensions (ints), "
                         f"e.g. (2, 3).")
    dims = tuple(dims)
    # int(2.5) == 2 made dims=(2.5, 2) trace a 4 x 4 state as if it were (2, 2).
    if not all(is_int(d) and d >= 1 for d in dims):
        raise InputError(f"partial_trace: dims={dims!r} must be positive integers.")
    dims = tuple(int(d) for d in dims)
    rho = numeric("rho", rho)
    total = math.prod(dims)
    if rho.ndim < 2 or rho.shape[-1] != total or rho.shape[-2] != total:
        raise InputError(
            f"partial_trace: rho has shape {rho.shape}, expected (..., {total}, {total}) for dims={dims}."
        )
    keep = _normalise_keep(dims, keep)
    return _partial_trace(rho, dims, keep)


@functools.partial(jax.jit, static_argnames=("dims", "keep"))
def _partial_trace(rho: Array, dims: tuple[int, ...], keep: tuple[int, ...]) -> Array:
    rho = jnp.asarray(rho, float_dtype(rho))  # integers as floats, like every other matrix input
    n = len(dims)
    batch = rho.shape[:-2]
    tensor = rho.reshape(batch + dims + dims)
    # Row index of subsystem i is axis i, column index axis n + i; traced subsystems share a label.
    rows = list(range(n))
    cols = [n + i if i in keep else i for i in range(n)]
    out = [i for i in keep] + [n + i for i in keep]
    reduced = jnp.einsum(tensor, [Ellipsis, *rows, *cols], [Ellipsis, *out])
    d_keep = math.prod(dims[k] for k in keep)
    return reduced.reshape(batch + (d_keep, d_keep))
