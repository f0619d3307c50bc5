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


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool if it is one (Python or NumPy): ``"no"`` or ``0`` for a flag was taken by its truth."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}={value!r} must be True or False.")
    return bool(value)


def numeric(name: str, value: Any, *, real: bool = False):
    """``value`` as an array if it holds numbers: lists and scalars become NumPy arrays, NumPy and
    JAX arrays and tracers are returned as they are (no copy off the device).

    Strings, ``None``, objects and bool are refused (NumPy's ``-`` refused bool deep inside a check,
    and bool ``+`` is OR, so a bool state gave a wrong entropy); so is complex when ``real``. The
    dtype is a static fact, so tracers are checked too. Integers pass: callers promote them to the
    float type.
    """
    if isinstance(value, (np.ndarray, jax.Array)):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):
            try:  # a list holding JAX arrays or tracers (jax.grad over one entry): jnp stacks them
                arr = jnp.asarray(value)
            except (ValueError, TypeError):  # ragged nested lists
                raise InputError(f"{name} is not a rectangular array of numbers; give equal-length rows.") from None
    dtype = getattr(arr, "dtype", None)
    if isinstance(value, (str, bytes)) or value is None:
        raise InputError(f"{name}={value!r} must be a number or an array of numbers.")
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise InputError(f"{name} has dtype {dtype}; give numbers (an array of int, float or complex).")
    if dtype.kind == "b":
        raise InputError(f"{name} has dtype bool; give numbers, e.g. {name}.astype(float).")
    if real and dtype.kind == "c":
        raise InputError(f"{name} has dtype {dtype.name}; it must be real.")
    return arr


def float_dtype(value) -> np.dtype:
    """The floating (or complex) dtype ``value`` computes in: integers promote to JAX's default float."""
    return jnp.result_type(jax.dtypes.canonicalize_dtype(value.dtype), float)


def check_overflow(name: str, value: Any, to) -> None:
    """Refuse a concrete ``value`` that is finite in its own precision but overflows ``to`` (1e39 in float32)."""
    if _is_concrete(value) and np.finfo(_real_dtype(value)).bits > jnp.finfo(to).bits:
        largest = float(np.max(np.abs(np.asarray(value)), initial=0.0))
        if largest > float(jnp.finfo(to).max):
            raise InputError(f"{name} overflows {jnp.dtype(to).name} (|entries| up to {largest:.3g}); "
                             f"rescale it or enable float64 (jax.config.update('jax_enable_x64', True)).")


def check_real_scalar(name: str, value: Any) -> None:
    """A real number (Python, NumPy or 0-d array, not bool): finite when concrete; a tracer's shape and
    dtype are checked (jit knows them), so a traced complex or array value is refused too."""
    if _is_concrete(value):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):
            arr = None
        if arr is None or arr.shape != () or arr.dtype.kind not in "iuf":
            raise InputError(f"{name}={value!r} must be a real scalar.")
        check_finite(name, arr)
    elif value.shape != () or value.dtype.kind not in "iuf":
        raise InputError(f"{name} must be a real scalar, got a traced value of shape {value.shape} and "
                         f"dtype {value.dtype}.")


def check_finite(name: str, value: np.ndarray) -> None:
    if not np.all(np.isfinite(value)):
        raise InputError(f"{name} contains NaN or infinite entries; pass finite numbers.")


def check_square(name: str, value, dim: int | None = None) -> None:
    """Shape checks only, so they hold for tracers too."""
    if value.ndim != 2 or value.shape[0] != value.shape[1]:
        raise InputError(f"{name} must be a square matrix, got shape {value.shape}.")
    if value.shape[0] == 0:
        raise InputError(f"{name} has shape {value.shape}; a matrix needs at least one row and column.")
    if dim is not None and value.shape[0] != dim:
        raise InputError(f"{name} has shape {value.shape}, expected ({dim}, {dim}).")


def _inexact(value: np.ndarray) -> np.ndarray:
    """Integers as floats: ``a - a^T`` of int8 entries wraps around."""
    value = np.asarray(value)
    return value if np.issubdtype(value.dtype, np.inexact) else value.astype(_real_dtype(value))


def _first(name: str, bad: np.ndarray) -> tuple[str, tuple]:
    """The first flagged matrix of a batch ``bad`` ``(...)``: its name (``name[i]``; ``name`` when
    ``bad`` is 0-d) and its index."""
    if bad.ndim == 0:
        return name, ()
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    return f"{name}[{', '.join(map(str, index))}]", index


def check_hermitian(name: str, value: np.ndarray) -> None:
    """Hermitian to rounding, for ``(..., n, n)`` matrices.

    The tolerance is relative to the largest entry, with the smallest normal number as an absolute
    floor: a floor of 1 (the old ``max(1, max|A|)``) let any matrix with entries below ~1e-10
    pass, however non-Hermitian.
    """
    a = _inexact(value)
    dtype = _real_dtype(a)
    scale = np.max(np.abs(a), axis=(-2, -1), initial=0.0)
    err = np.max(np.abs(a - np.swapaxes(a, -1, -2).conj()), axis=(-2, -1), initial=0.0)
    tol = _tolerance(dtype) * scale + float(np.finfo(dtype).tiny)
    bad = err > tol
    if np.any(bad):
        which, i = _first(name, bad)
        raise InputError(f"{which} is not Hermitian (max |A - A^dag| = {float(err[i]):.3g} > {float(tol[i]):.3g}); "
                         f"pass (A + A^dag) / 2 if the asymmetry is rounding.")


def check_density_matrix(name: str, value: np.ndarray) -> None:
    """Hermitian, unit trace, positive semidefinite, for ``(..., n, n)`` matrices."""
    a = _inexact(value)
    check_hermitian(name, a)
    n = a.shape[-1]
    tol = _tolerance(_real_dtype(a)) * n
    trace = np.trace(a, axis1=-2, axis2=-1)
    bad = np.abs(trace - 1.0) > tol
    if np.any(bad):
        which, i = _first(name, bad)
        raise InputError(f"{which} has trace {complex(trace[i]).real:.12g}, expected 1; divide it by its trace.")
    # NumPy's eigvalsh has no half-precision kernel; float16 entries are exact in float32.
    herm = (a + np.swapaxes(a, -1, -2).conj()) / 2
    lowest = np.linalg.eigvalsh(herm.astype(np.result_type(herm, np.float32)))[..., 0]
    bad = lowest < -tol
    if np.any(bad):
        which, i = _first(name, bad)
        raise InputError(f"{which} has a negative eigenvalue {float(lowest[i]):.3g}; a density matrix must be "
                         f"positive semidefinite.")


def check_matrix(name: str, value: Any, dim: int | None = None):
    """A square (``dim x dim`` if given) numeric matrix, finite and Hermitian when concrete.

    Shape and dtype are static, so they are checked on tracers too (a wrong-size traced matrix built
    an inconsistent OpenSystem under jit). Returns the NumPy array, or the tracer as it is.
    """
    a = numeric(name, value)
    check_square(name, a, dim)
    if _is_concrete(a):
        check_finite(name, a)
        check_hermitian(name, a)
    return a


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


def _stack_traced(value: Any) -> Any:
    """A list holding JAX arrays or tracers (``[[-1, g], [g, 1]]`` under ``jax.grad`` over ``g``)
    as one JAX array, as ``jnp.asarray`` stacks it; other values unchanged. NumPy cannot convert
    tracers, so the checks refused such a list as 'not a rectangular array'."""
    if isinstance(value, (list, tuple)) and any(isinstance(leaf, jax.Array)
                                                for leaf in jax.tree_util.tree_leaves(value)):
        try:
            return jnp.asarray(value)
        except (ValueError, TypeError):
            return value  # ragged: numeric() names it
    return value


def _as_matrix_tuple(name: str, value: Any, *, allow_empty: bool = False, what: str = "matrix") -> tuple[Any, ...]:
    """One matrix (2-D, or nested lists of numbers) or a sequence of matrices (3-D, list) as a tuple."""
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
    if not items and not allow_empty:
        raise InputError(f"{name} is empty; give at least one {what}.")
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

    Integer entries are promoted to the float type; bool, strings and ``None`` are refused.
    Construction checks the shape and dtype of every argument, traced or not (both are known under
    ``jit``), and the values of every concrete one (finite, Hermitian, a density matrix, and each
    relation between concrete ones), raising :class:`InputError` naming the argument; a traced
    argument skips only its own value checks. Pytree unflattening (under ``jit``/``vmap``) skips
    validation.

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
        h_system, betas, coupling, rho_system, chemical_potentials = (
            _stack_traced(x) for x in (h_system, betas, coupling, rho_system, chemical_potentials))
        h_res = _as_matrix_tuple("h_reservoirs", h_reservoirs, what="reservoir Hamiltonian")
        n_res = len(h_res)
        n_ops = None if number_operators is None else _as_matrix_tuple("number_operators", number_operators)
        # First: the dtype below needs numbers (a string beta failed inside JAX naming nothing).
        _validate(h_system, h_res, betas, coupling, rho_system, chemical_potentials, n_ops)
        leaves = [h_system, *h_res, betas, coupling, rho_system]
        if chemical_potentials is not None:
            leaves.append(chemical_potentials)
        if n_ops is not None:
            leaves.extend(n_ops)
        # The leaves' dtypes as JAX would make them, without converting (1e39 overflowed float32 here).
        dtype = jnp.result_type(*[jax.dtypes.canonicalize_dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
                                  for x in leaves], float)
        check_precision(dtype, "the OpenSystem's inputs")

        def conv(x, name, to=dtype):
            check_overflow(name, x, to)
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
    """Shape and dtype checks on every argument (static, so known for tracers too: a traced coupling
    of the wrong size used to build an inconsistent system under jit, a traced complex beta lost its
    imaginary part); value checks on each concrete one. A traced argument skips only its own value
    checks: one traced beta used to switch off the checks of every concrete matrix as well."""
    hs = check_matrix("h_system", h_system)
    hr = [check_matrix(f"h_reservoirs[{r}]", h) for r, h in enumerate(h_res)]
    n_res = len(h_res)
    b = numeric("betas", betas, real=True)
    if b.ndim > 1 or (b.ndim == 1 and b.shape[0] != n_res):
        raise InputError(f"betas has shape {b.shape}, expected a scalar or ({n_res},), one per reservoir.")
    if _is_concrete(b):
        check_finite("betas", b)
    dims = [hs.shape[0]] + [h.shape[0] for h in hr]
    total = math.prod(dims)
    v = numeric("coupling", coupling)
    if v.shape != (total, total):
        raise InputError(
            f"coupling has shape {v.shape}, expected ({total}, {total}) = system {dims[0]} x reservoirs "
            f"{tuple(dims[1:])} in the order s (x) r_1 (x) ... (x) r_K (d_s from h_system, d_r from "
            f"h_reservoirs); fix whichever of h_system, h_reservoirs and coupling has the wrong size."
        )
    check_matrix("coupling", v)
    rho = numeric("rho_system", rho_system)
    check_square("rho_system", rho, dims[0])
    if _is_concrete(rho):
        check_finite("rho_system", rho)
        check_density_matrix("rho_system", rho)
    if chemical_potentials is not None:
        mu = numeric("chemical_potentials", chemical_potentials, real=True)
        if mu.ndim > 1 or (mu.ndim == 1 and mu.shape[0] != n_res):
            raise InputError(f"chemical_potentials must be real with shape () or ({n_res},), got {mu.shape}.")
        if _is_concrete(mu):
            check_finite("chemical_potentials", mu)
        if n_ops is None:
            raise InputError("chemical_potentials needs number_operators (one N_r per reservoir).")
    if n_ops is not None:
        if len(n_ops) != n_res:
            raise InputError(f"number_operators has {len(n_ops)} entries, expected {n_res}, one per reservoir.")
        for r, n in enumerate(n_ops):
            name = f"number_operators[{r}]"
            n = check_matrix(name, n, dims[r + 1])
            h = hr[r]
            if not (_is_concrete(n) and _is_concrete(h)):
                continue
            n, h = _inexact(n), _inexact(h)
            comm = float(np.max(np.abs(h @ n - n @ h), initial=0.0))
            scale = max(1.0, float(np.max(np.abs(h))) * float(np.max(np.abs(n), initial=1.0)))
            if comm > _tolerance(_real_dtype(h)) * scale * dims[r + 1]:
                raise InputError(
                    f"{name} does not commute with h_reservoirs[{r}] (max |[H, N]| = {comm:.3g}); "
                    f"the grand-canonical state needs [H_r, N_r] = 0."
                )
