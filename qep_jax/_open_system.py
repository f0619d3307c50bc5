"""The problem description: a finite system coupled to K finite reservoirs."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


class InputError(ValueError):
    """Raised for invalid user input; the message names the argument and the fix."""


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _tolerance(dtype) -> float:
    # ~1.5e-10 in float64, ~3e-6 in float32: loose enough for matrices built with rounding.
    return 0.01 * math.sqrt(float(np.finfo(dtype).eps))


def is_int(value: Any) -> bool:
    """An integer, Python or NumPy, but not a bool (Python counts ``True`` as the int 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a Python int if it is an integer (Python or NumPy, not bool) ``>= minimum``."""
    if not is_int(value) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise InputError(f"{name}={value!r} must be {kind}.")
    return int(value)


def check_finite(name: str, value: np.ndarray) -> None:
    if not np.all(np.isfinite(value)):
        raise InputError(f"{name} contains NaN or infinite entries; pass finite numbers.")


def check_square(name: str, value: np.ndarray, dim: int | None = None) -> None:
    if value.ndim != 2 or value.shape[0] != value.shape[1]:
        raise InputError(f"{name} must be a square matrix, got shape {value.shape}.")
    if dim is not None and value.shape[0] != dim:
        raise InputError(f"{name} has shape {value.shape}, expected ({dim}, {dim}).")


def check_hermitian(name: str, value: np.ndarray) -> None:
    scale = max(1.0, float(np.max(np.abs(value), initial=0.0)))
    err = float(np.max(np.abs(value - value.conj().T), initial=0.0))
    tol = _tolerance(_real_dtype(value)) * scale
    if err > tol:
        raise InputError(
            f"{name} is not Hermitian (max |A - A^dag| = {err:.3g} > {tol:.3g}); "
            f"pass (A + A^dag) / 2 if the asymmetry is rounding."
        )


def check_density_matrix(name: str, value: np.ndarray) -> None:
    check_hermitian(name, value)
    n = value.shape[0]
    tol = _tolerance(_real_dtype(value)) * n
    trace = complex(np.trace(value))
    if abs(trace - 1.0) > tol:
        raise InputError(f"{name} has trace {trace.real:.12g}, expected 1; divide it by its trace.")
    # NumPy's eigvalsh has no half-precision kernel; float16 entries are exact in float32.
    lowest = float(np.linalg.eigvalsh(((value + value.conj().T) / 2).astype(np.result_type(value, np.float32)))[0])
    if lowest < -tol:
        raise InputError(
            f"{name} has a negative eigenvalue {lowest:.3g}; a density matrix must be positive semidefinite."
        )


def check_precision(dtype, what: str) -> None:
    """Refuse half precision (float16, bfloat16): JAX's eigh has no kernel for it, and it failed deep inside."""
    if jnp.finfo(dtype).bits < 32:
        raise InputError(f"{what} have dtype {jnp.dtype(dtype).name}, which qep_jax does not support; give float32 "
                         f"(complex64) or float64 (complex128) values.")


def _real_dtype(value: np.ndarray):
    dt = np.asarray(value).dtype
    if np.issubdtype(dt, np.complexfloating):
        return np.finfo(dt).dtype
    if np.issubdtype(dt, np.floating):
        return dt
    return np.float64


def _as_matrix_tuple(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(row, (list, tuple)) and all(np.isscalar(v) for v in row) for row in value):
        items = (np.asarray(value),)  # one matrix written as nested lists, as h_system accepts
    elif isinstance(value, (list, tuple)):
        items = tuple(value)
    else:
        arr = value if hasattr(value, "ndim") else np.asarray(value)
        if arr.ndim == 2:
            items = (arr,)
        elif arr.ndim == 3:
            items = tuple(arr[i] for i in range(arr.shape[0]))
        else:
            raise InputError(f"{name} must be one matrix or a sequence of matrices, got shape {arr.shape}.")
    if not items:
        raise InputError(f"{name} is empty; give at least one reservoir Hamiltonian.")
    return items


def _kron_all(mats: Sequence[Array]) -> Array:
    out = mats[0]
    for m in mats[1:]:
        out = jnp.kron(out, m)
    return out


@jax.tree_util.register_pytree_with_keys_class
class OpenSystem:
    """A finite system coupled to ``K >= 1`` finite reservoirs (frozen pytree).

    Total Hamiltonian ``H = H_s (x) 1 + sum_r 1 (x) H_r (x) 1 + V`` on the space
    ``s (x) r_1 (x) ... (x) r_K`` (system index slowest). Initial state
    ``rho_s(0) (x) prod_r exp(-beta_r (H_r - mu_r N_r)) / Z_r``.

    Fields (arrays, differentiable):
        h_system: ``(d_s, d_s)`` Hermitian.
        h_reservoirs: tuple of ``K`` Hermitian ``(d_r, d_r)`` (any basis, not only diagonal).
        betas: ``(K,)`` inverse temperatures (finite; zero and negative allowed).
        coupling: ``(D, D)`` Hermitian, ``D = d_s prod_r d_r``.
        rho_system: ``(d_s, d_s)`` initial system density matrix (pure or mixed).
        chemical_potentials: ``(K,)`` (zeros when not given).
        number_operators: tuple of ``K`` Hermitian ``(d_r, d_r)`` commuting with ``H_r``, or ``None``.

    Static metadata:
        diagonal_reservoirs: every ``H_r`` (and ``N_r``) is diagonal. The reservoir Gibbs states
            then need no diagonalization and the reservoir observables no matrix products
            (``O(d_r)`` instead of ``O(d_r^3)``, ``O(D d_r)`` instead of ``O(D^2 d_r)``). Found by
            inspection when the matrices are concrete; pass ``True`` to declare it for traced ones
            (models whose reservoirs are diagonal by construction do). A declared ``True`` that
            concrete matrices contradict raises :class:`InputError`.

    Construction validates every concrete argument (and each relation between concrete ones) and
    raises :class:`InputError` naming the argument; traced arguments are skipped one by one. Pytree
    unflattening (under ``jit``/``vmap``) skips validation.

    Example:
        >>> import jax.numpy as jnp, qep_jax
        >>> sz = jnp.diag(jnp.array([-1.0, 1.0])); sx = jnp.array([[0.0, 1.0], [1.0, 0.0]])
        >>> hr = jnp.diag(jnp.linspace(-0.5, 0.5, 4))
        >>> system = qep_jax.OpenSystem(0.05 * sz, hr, 10.0, 0.1 * jnp.kron(sx, jnp.ones((4, 4)) / 4),
        ...                             jnp.diag(jnp.array([1.0, 0.0])))
        >>> system.dims
        (2, 4)
    """

    __slots__ = (
        "diagonal_reservoirs",
        "h_system",
        "h_reservoirs",
        "betas",
        "coupling",
        "rho_system",
        "chemical_potentials",
        "number_operators",
    )

    def __init__(
        self,
        h_system,
        h_reservoirs,
        betas,
        coupling,
        rho_system,
        *,
        chemical_potentials=None,
        number_operators=None,
        diagonal_reservoirs: bool | None = None,
    ):
        h_res = _as_matrix_tuple("h_reservoirs", h_reservoirs)
        n_res = len(h_res)
        n_ops = None if number_operators is None else _as_matrix_tuple("number_operators", number_operators)
        leaves = [h_system, *h_res, betas, coupling, rho_system]
        if chemical_potentials is not None:
            leaves.append(chemical_potentials)
        if n_ops is not None:
            leaves.extend(n_ops)
        # The leaves' dtypes as JAX would make them, without converting (1e39 overflowed float32 here).
        dtype = jnp.result_type(*[jax.dtypes.canonicalize_dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
                                  for x in leaves], float)
        check_precision(dtype, "the OpenSystem's inputs")
        _validate(h_system, h_res, betas, coupling, rho_system, chemical_potentials, n_ops)

        def conv(x, name, to=dtype):
            # Finite in the caller's precision, it may overflow in a narrower one (1e39 in float32).
            if _is_concrete(x) and np.finfo(_real_dtype(x)).bits > jnp.finfo(to).bits:
                largest = float(np.max(np.abs(np.asarray(x)), initial=0.0))
                if largest > float(jnp.finfo(to).max):
                    raise InputError(f"{name} overflows {jnp.dtype(to).name} (|entries| up to {largest:.3g}); "
                                     f"rescale it or enable float64 (jax.config.update('jax_enable_x64', True)).")
            return jnp.asarray(x, dtype=to)

        real = jnp.finfo(dtype).dtype
        object.__setattr__(self, "h_system", conv(h_system, "h_system"))
        object.__setattr__(self, "h_reservoirs", tuple(conv(h, f"h_reservoirs[{r}]") for r, h in enumerate(h_res)))
        object.__setattr__(self, "betas", jnp.broadcast_to(conv(betas, "betas", real), (n_res,)))
        object.__setattr__(self, "coupling", conv(coupling, "coupling"))
        object.__setattr__(self, "rho_system", conv(rho_system, "rho_system"))
        mus = jnp.zeros((n_res,), real) if chemical_potentials is None else chemical_potentials
        object.__setattr__(self, "chemical_potentials",
                           jnp.broadcast_to(conv(mus, "chemical_potentials", real), (n_res,)))
        object.__setattr__(self, "number_operators",
                           None if n_ops is None else tuple(conv(n, f"number_operators[{r}]") for r, n in enumerate(n_ops)))
        object.__setattr__(self, "diagonal_reservoirs", _diagonal_flag(diagonal_reservoirs, h_res, n_ops))

    def __setattr__(self, name, value):
        raise AttributeError("OpenSystem is immutable; use dataclasses-style replace via the constructor.")

    # -- pytree protocol ------------------------------------------------------------------
    # The first slot is static metadata (the pytree's aux data), the others are the leaves.
    def tree_flatten_with_keys(self):
        names = self.__slots__[1:]
        keys = [jax.tree_util.GetAttrKey(name) for name in names]
        return list(zip(keys, (getattr(self, n) for n in names))), self.diagonal_reservoirs

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        object.__setattr__(obj, "diagonal_reservoirs", aux)
        for name, value in zip(cls.__slots__[1:], children):
            object.__setattr__(obj, name, value)
        return obj

    def __repr__(self) -> str:
        return f"OpenSystem(dims={self.dims}, dtype={self.coupling.dtype})"

    # -- static shape information -----------------------------------------------------------
    @property
    def system_dim(self) -> int:
        return int(self.h_system.shape[-1])

    @property
    def reservoir_dims(self) -> tuple[int, ...]:
        return tuple(int(h.shape[-1]) for h in self.h_reservoirs)

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.system_dim, *self.reservoir_dims)

    @property
    def n_reservoirs(self) -> int:
        return len(self.h_reservoirs)

    @property
    def total_dim(self) -> int:
        return math.prod(self.dims)

    # -- derived operators (traceable) --------------------------------------------------------
    def embed(self, op: Array, factor: int) -> Array:
        """``1 (x) ... (x) op (x) ... (x) 1`` with ``op`` on factor ``factor`` (0 = system)."""
        mats = [jnp.eye(d, dtype=op.dtype) for d in self.dims]
        mats[factor] = op
        return _kron_all(mats)

    def hamiltonian(self) -> Array:
        """Total Hamiltonian ``(D, D)``."""
        h = self.embed(self.h_system, 0) + self.coupling
        for r, h_r in enumerate(self.h_reservoirs):
            h = h + self.embed(h_r, r + 1)
        return h

    def grand_hamiltonian(self, r: int) -> Array:
        """``H_r - mu_r N_r`` ``(d_r, d_r)``: the operator whose Gibbs state is ``rho_r^eq``."""
        if self.number_operators is None:
            return self.h_reservoirs[r]
        return self.h_reservoirs[r] - self.chemical_potentials[r] * self.number_operators[r]


def _is_diagonal(m) -> bool:
    m = np.asarray(m)
    return not np.any(m[~np.eye(m.shape[-1], dtype=bool)])


def _diagonal_flag(declared, h_res, n_ops) -> bool:
    """The ``diagonal_reservoirs`` metadata: checked when concrete, trusted when declared for tracers."""
    if declared is not None and not isinstance(declared, (bool, np.bool_)):
        raise InputError(f"diagonal_reservoirs={declared!r} must be True, False or None (inspect).")
    if declared is not None and not declared:
        return False  # an opt-out needs no inspection
    mats = list(h_res) + list(n_ops or ())
    if not all(_is_concrete(m) for m in mats):
        return bool(declared)
    diagonal = all(_is_diagonal(m) for m in mats)
    if declared and not diagonal:
        raise InputError(
            "diagonal_reservoirs=True, but a reservoir Hamiltonian or number operator has nonzero "
            "off-diagonal entries; pass diagonal_reservoirs=None to have it inspected."
        )
    return diagonal


def _validate(h_system, h_res, betas, coupling, rho_system, chemical_potentials, n_ops) -> None:
    """Every check whose arguments are concrete. A traced argument (jit, grad, vmap) is skipped on its
    own: one traced beta used to switch off the checks of every concrete matrix as well."""

    def matrix(name, x, dim=None):
        if not _is_concrete(x):
            return None
        a = np.asarray(x)
        check_square(name, a, dim)
        check_finite(name, a)
        check_hermitian(name, a)
        return a

    hs = matrix("h_system", h_system)
    hr = [matrix(f"h_reservoirs[{r}]", h) for r, h in enumerate(h_res)]
    n_res = len(h_res)
    if _is_concrete(betas):
        b = np.asarray(betas, dtype=float) if np.isrealobj(np.asarray(betas)) else None
        if b is None:
            raise InputError("betas must be real inverse temperatures.")
        if b.ndim > 1 or (b.ndim == 1 and b.shape[0] != n_res):
            raise InputError(f"betas has shape {b.shape}, expected a scalar or ({n_res},), one per reservoir.")
        check_finite("betas", b)
    dims = [None if a is None else a.shape[0] for a in [hs] + hr]
    if _is_concrete(coupling):
        v = np.asarray(coupling)
        total = None if None in dims else math.prod(dims)  # unknown while a Hamiltonian is traced
        if total is not None and v.shape != (total, total):
            raise InputError(
                f"coupling has shape {v.shape}, expected ({total}, {total}) = system {dims[0]} x reservoirs "
                f"{tuple(dims[1:])} in the order s (x) r_1 (x) ... (x) r_K (d_s from h_system, d_r from "
                f"h_reservoirs); fix whichever of h_system, h_reservoirs and coupling has the wrong size."
            )
        matrix("coupling", v)
    if _is_concrete(rho_system):
        rho = np.asarray(rho_system)
        check_square("rho_system", rho, dims[0])
        check_finite("rho_system", rho)
        check_density_matrix("rho_system", rho)
    if chemical_potentials is not None:
        if _is_concrete(chemical_potentials):
            mu = np.asarray(chemical_potentials)
            if not np.isrealobj(mu) or mu.ndim > 1 or (mu.ndim == 1 and mu.shape[0] != n_res):
                raise InputError(f"chemical_potentials must be real with shape () or ({n_res},), got {mu.shape}.")
            check_finite("chemical_potentials", mu)
        if n_ops is None:
            raise InputError("chemical_potentials needs number_operators (one N_r per reservoir).")
    if n_ops is not None:
        if len(n_ops) != n_res:
            raise InputError(f"number_operators has {len(n_ops)} entries, expected {n_res}, one per reservoir.")
        for r, n in enumerate(n_ops):
            name = f"number_operators[{r}]"
            n = matrix(name, n, dims[r + 1])
            h = hr[r]
            if n is None or h is None:
                continue
            comm = float(np.max(np.abs(h @ n - n @ h), initial=0.0))
            scale = max(1.0, float(np.max(np.abs(h))) * float(np.max(np.abs(n), initial=1.0)))
            if comm > _tolerance(_real_dtype(h)) * scale * dims[r + 1]:
                raise InputError(
                    f"{name} does not commute with h_reservoirs[{r}] (max |[H, N]| = {comm:.3g}); "
                    f"the grand-canonical state needs [H_r, N_r] = 0."
                )
