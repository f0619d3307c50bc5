"""Random-matrix ensembles with explicit keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from ._linalg import written_out
from ._open_system import InputError, check_count, is_int


def goe(key: Array, n: int, shape: tuple[int, ...] = (), dtype=None) -> Array:
    """Gaussian orthogonal ensemble with density ``exp(-Tr X^2 / 4)``.

    ``X_ii ~ Normal(0, 2)`` and ``X_ij = X_ji ~ Normal(0, 1)`` for ``i < j``; the spectrum is a
    semicircle of radius ``2 sqrt(n)``.

    Args:
        key: a ``jax.random`` key.
        n: matrix size (static).
        shape: batch shape (static).
        dtype: real floating dtype; defaults to JAX's default float (float64 with x64 enabled).

    Returns:
        ``(*shape, n, n)`` real symmetric.

    Example:
        >>> import jax, qep_jax
        >>> qep_jax.goe(jax.random.key(0), 4, shape=(10,)).shape
        (10, 4, 4)
    """
    n = check_count("n", n)
    if is_int(shape):
        raise InputError(f"shape={shape!r} must be a tuple of batch sizes, e.g. ({shape},).")
    shape = tuple(shape)
    if not all(is_int(s) and s >= 0 for s in shape):
        raise InputError(f"shape={shape!r} must be a tuple of non-negative ints (the batch shape).")
    shape = tuple(int(s) for s in shape)
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    if not jnp.issubdtype(dtype, jnp.floating):
        # A complex dtype drew complex entries, and (A + A^T)/sqrt(2) was not Hermitian.
        raise InputError(f"dtype={dtype} must be a real floating dtype (the GOE is real symmetric).")
    a = written_out(jax.random.normal(key, shape + (n, n), dtype=dtype))
    # (A + A^T)/sqrt(2): off-diagonal variance (1 + 1)/2 = 1, diagonal variance 4/2 = 2.
    return (a + jnp.swapaxes(a, -1, -2)) / jnp.sqrt(jnp.asarray(2.0, a.dtype))
