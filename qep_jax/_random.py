"""Random-matrix ensembles with explicit keys."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._linalg import written_out
from ._open_system import InputError, check_count, check_precision, is_int


@functools.cache
def _legacy_key_shape(impl: str) -> tuple[int, ...]:
    return jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape  # abstract: nothing runs


def check_key(key, name: str = "key") -> None:
    """One ``jax.random`` key: a typed key of shape ``()`` (``jax.random.key``) or a legacy
    ``uint32`` key (``jax.random.PRNGKey``). Shape and dtype are static, so a traced key is checked
    too. JAX's own error for a seed or ``None`` ("invalid PRNG key data") named no argument, and
    a batch of keys failed deep inside ``fold_in``."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    legacy = _legacy_key_shape(str(jax.config.jax_default_prng_impl))
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
        got = f"a batch of keys of shape {shape}; pass one (map over several with jax.vmap)"
    elif isinstance(dtype, np.dtype) and dtype == np.uint32 and shape is not None:
        if tuple(shape) == legacy:
            return
        if tuple(shape[-len(legacy):]) == legacy:
            got = f"a batch of legacy keys of shape {tuple(shape)}; pass one (map over several with jax.vmap)"
        else:
            got = f"a uint32 array of shape {tuple(shape)}, not key data of shape {legacy}"
    elif is_int(key):
        got = f"the int {key}, a seed; pass jax.random.key({key})"
    else:
        got = f"{type(key).__name__}" + (f" of dtype {dtype} and shape {tuple(shape)}" if shape is not None else "")
    raise InputError(f"{name} must be one jax.random key, e.g. jax.random.key(seed); got {got}.")


def check_realization_indices(first: int, n: int) -> None:
    """Realization ``i`` uses ``fold_in(key, i)``, which keeps only the low 32 bits of ``i``: index
    ``2**32`` repeats realization 0 (with x64 on), and without x64 the indices are int32."""
    limit = 2**32 if jax.config.jax_enable_x64 else 2**31
    if first + n > limit:
        fix = ("; fold_in keeps the low 32 bits of a realization index, so index 2**32 would repeat realization 0"
               if jax.config.jax_enable_x64 else
               " without jax_enable_x64 (realization indices are int32); with x64 the limit is 2**32")
        raise InputError(f"first_realization + n_realizations = {first + n} must be <= {limit} = 2**{limit.bit_length() - 1}"
                         f"{fix}.")


def goe(key: Array, n: int, shape: tuple[int, ...] = (), dtype=None) -> Array:
    """Gaussian orthogonal ensemble with density ``exp(-Tr X^2 / 4)``.

    ``X_ii ~ Normal(0, 2)`` and ``X_ij = X_ji ~ Normal(0, 1)`` for ``i < j``; the spectrum is a
    semicircle of radius ``2 sqrt(n)``.

    Args:
        key: one ``jax.random`` key (``jax.random.key(seed)``; a legacy ``PRNGKey`` works too).
        n: matrix size (static).
        shape: batch shape (static).
        dtype: float32 or float64 (float64 needs x64 enabled); defaults to JAX's default float
            (float64 with x64 enabled).

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
    check_key(key)
    try:
        dtype = jnp.dtype(dtype or jnp.result_type(float))
    except TypeError:
        raise InputError(f"dtype={dtype!r} is not a dtype; give e.g. jnp.float64 or jnp.float32.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        # A complex dtype drew complex entries, and (A + A^T)/sqrt(2) was not Hermitian.
        raise InputError(f"dtype={dtype} must be a real floating dtype (the GOE is real symmetric).")
    check_precision(dtype, "GOE matrices")
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:  # jax.random.normal returned float32 without a word
        raise InputError(f"dtype={dtype} needs jax.config.update('jax_enable_x64', True); without it JAX computes "
                         f"in {jax.dtypes.canonicalize_dtype(dtype)}: pass that, or None for JAX's default float.")
    a = written_out(jax.random.normal(key, shape + (n, n), dtype=dtype))
    # (A + A^T)/sqrt(2): off-diagonal variance (1 + 1)/2 = 1, diagonal variance 4/2 = 2.
    return (a + jnp.swapaxes(a, -1, -2)) / jnp.sqrt(jnp.asarray(2.0, a.dtype))
