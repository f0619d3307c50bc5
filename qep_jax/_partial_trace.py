"""Partial trace over a tensor-product space with static subsystem dimensions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
from jax import Array


def _normalise_keep(dims: tuple[int, ...], keep: int | Sequence[int]) -> tuple[int, ...]:
    keep = (keep,) if isinstance(keep, int) else tuple(keep)
    for k in keep:
        if not isinstance(k, int) or not 0 <= k < len(dims):
            raise ValueError(f"partial_trace: keep={keep!r} must hold subsystem indices in [0, {len(dims)}).")
    if len(set(keep)) != len(keep):
        raise ValueError(f"partial_trace: keep={keep!r} names a subsystem twice.")
    return tuple(sorted(keep))


def partial_trace(rho: Array, dims: Sequence[int], keep: int | Sequence[int]) -> Array:
    """Reduced state ``Tr_{not keep} rho`` on the subsystems listed in ``keep``.

    The total space is ``dims[0] (x) dims[1] (x) ...`` with the first factor slowest (Kronecker
    order). ``dims`` and ``keep`` are static Python ints; index bookkeeping happens before tracing.

    Args:
        rho: ``(..., D, D)`` with ``D = prod(dims)``.
        dims: subsystem dimensions.
        keep: index or indices of the subsystems to keep (returned in increasing order).

    Returns:
        ``(..., d_keep, d_keep)`` with ``d_keep = prod(dims[k] for k in keep)``.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> rho = jnp.kron(jnp.diag(jnp.array([1.0, 0.0])), jnp.eye(3) / 3)
        >>> qep_jax.partial_trace(rho, (2, 3), keep=0)
        Array([[1., 0.], [0., 0.]], ...)
    """
    dims = tuple(int(d) for d in dims)
    if any(d < 1 for d in dims):
        raise ValueError(f"partial_trace: dims={dims} must be positive integers.")
    total = math.prod(dims)
    if rho.ndim < 2 or rho.shape[-1] != total or rho.shape[-2] != total:
        raise ValueError(
            f"partial_trace: rho has shape {rho.shape}, expected (..., {total}, {total}) for dims={dims}."
        )
    keep = _normalise_keep(dims, keep)
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
