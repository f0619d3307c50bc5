"""Shared input checks for protocols: shapes and dtypes of every field (tracers too), values of concrete ones."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._open_system import InputError, _is_concrete, check_finite, check_overflow, numeric


def real_array(name: str, value, ndim: int) -> None:
    """Raise :class:`InputError` unless ``value`` is a real array with ``ndim`` dimensions, finite when
    concrete. Shape and dtype are static, so a traced field is checked too (a traced 1-D ``values``
    failed later with an IndexError); bool, strings and ``None`` are refused."""
    arr = numeric(name, value)
    if arr.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}.")
    if jnp.iscomplexobj(arr):
        raise InputError(f"{name} must be real (control amplitudes multiply Hermitian operators).")
    if _is_concrete(arr):
        check_finite(name, arr)


def as_real(name: str, value, dtype):
    """``value`` in ``dtype``, refused if it overflows it (1e39 in float32 became inf)."""
    check_overflow(name, value, dtype)
    return jnp.asarray(value, dtype)


def positive(name: str, value) -> None:
    if _is_concrete(value) and not np.all(np.asarray(value) > 0):
        raise InputError(f"{name} must be > 0, got {np.asarray(value)!r}.")


def nonnegative(name: str, value) -> None:
    if _is_concrete(value) and not np.all(np.asarray(value) >= 0):
        raise InputError(f"{name} must be >= 0, got {np.asarray(value)!r}.")


def sequences_as_arrays(obj, fields: tuple[str, ...]) -> None:
    """Python lists and tuples among a frozen dataclass's fields become NumPy arrays (JAX's
    ``result_type`` does not take a list: ``PiecewiseConstant([0.5], [[1.0]])`` raised a TypeError)."""
    for name in fields:
        value = getattr(obj, name)
        if isinstance(value, (list, tuple)):
            object.__setattr__(obj, name, np.asarray(value))


def register_frozen(cls, fields: tuple[str, ...]):
    """Register a frozen dataclass as a pytree whose unflattening skips ``__post_init__``.

    Transformations rebuild pytrees from tracers or placeholder objects; validating or converting
    those would fail, so unflattening sets the fields directly.
    """
    import jax

    def flatten_with_keys(obj):
        return [(jax.tree_util.GetAttrKey(f), getattr(obj, f)) for f in fields], None

    def flatten(obj):
        return [getattr(obj, f) for f in fields], None

    def unflatten(_, children):
        obj = object.__new__(cls)
        for f, c in zip(fields, children):
            object.__setattr__(obj, f, c)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls
