"""Hermitian eigendecomposition on the CPU through NumPy's LAPACK, batches split over the cores.

jaxlib 0.10's CPU ``eigh`` kernel splits a *batched* call over XLA's intra-op thread pool and
waits for the pieces from inside a pool thread. When two such calls run at the same time (XLA runs
independent operations concurrently, and ``vmap``/``lax.map(batch_size=)`` batch every ``eigh`` in
our kernels) on a machine with few cores, both pool threads wait on each other forever: the
process hangs with every thread idle (observed here on 2 cores: gdb shows both ``tf_XLAEigen``
threads in ``jax::ParallelBatchMap`` under ``lapack_zheevd_ffi``). On the CPU this module therefore
never calls XLA's ``eigh`` on a batch: a batched :func:`eigh` calls NumPy's ``eigh`` (LAPACK
``?heevd``/``?syevd``, the same divide-and-conquer driver) through ``jax.pure_callback`` (a single
matrix keeps XLA's kernel, which has no batch to split), and :func:`eigvalsh` NumPy's
``eigvalsh`` (``jobz='N'``: ``jnp.linalg.eigvalsh`` computes the eigenvectors and drops them,
twice the work), except for ``2 x 2`` matrices, whose eigenvalues it writes in closed form. When
BLAS runs one thread per call (``OPENBLAS_NUM_THREADS=1``, or a ``threadpoolctl`` limit) a batch
is split over the cores in host threads (NumPy releases the GIL inside LAPACK); otherwise
:func:`hint_blas_threads` says once how to get that. A process with several CPU devices uses no
callbacks (see :func:`_callbacks_safe`): it loops over single matrices with XLA's kernel. On GPU/TPU the native solvers are used unchanged.

Derivatives: the JVP is the textbook one (``dE = diag(W^dag dA W)``, eigenvector term with
``1/(E_j - E_i)``), as in ``jnp.linalg.eigh``; callers that need correct derivatives at
degeneracies wrap their own Daleckii-Krein rules around this function.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import warnings

import jax
import jax.numpy as jnp
from jax import Array
import numpy as np


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def hermitian_part(a: Array) -> Array:
    """``(a + a^dag) / 2`` over the last two axes; ``(..., n, n)``."""
    return (a + jnp.swapaxes(a, -1, -2).conj()) / 2


def diagonal_in_basis(vectors: Array, matrix: Array) -> Array:
    """``Re <v_i| M |v_i>`` for the columns ``v_i`` of ``vectors``; shapes ``(..., n, n) -> (..., n)``."""
    return jnp.real(jnp.einsum("...ji,...jk,...ki->...i", vectors.conj(), matrix, vectors))


def transposed(a: Array) -> Array:
    """``a^T`` over the last two axes as a row-major copy, for the left operand of a product.

    XLA's CPU dot multiplies a transposed (column-major) left operand at about half speed: a
    400 x 400 float64 ``a.T @ b`` ran at 100 GFLOP/s on 2 cores against 195 for ``a @ b``, and
    ``(b.T @ a).T`` is no better. Writing the transpose out first (``O(n^2)``) restores the fast
    kernel; the optimization barrier keeps XLA from folding the copy back into the product. On a
    GPU the copy is the same negligible ``O(n^2)``.
    """
    return jax.lax.optimization_barrier(jnp.swapaxes(a, -1, -2))


def written_out(x: Array) -> Array:
    """``x + 0`` (equal to ``x``; a ``-0.0`` becomes ``+0.0``), as the output of a reduction.

    XLA fuses an elementwise producer into each of its consumers and evaluates it again for every
    entry a consumer reads. The sampler behind ``jax.random.normal`` (an ``erf_inv`` per entry)
    then ran again per entry of whatever the GOE matrix went into: per spin block of the
    Hamiltonian's ``kron`` in ``SpinGORM`` (2.3 of 15.5 ms per realization at N = 200), N^2 times
    per normal in ``SpinTwoGORM``'s ``kron(X_hot, 1) + kron(1, X_cold)`` (19.4-20.8 ms per
    realization at N = 14 before, 15.7-17.0 after). XLA does not re-evaluate a reduction's
    output, so summing with zeros writes the normals out once. The same held for the phases
    ``cos(E t)``, ``sin(E t)`` of the expectation series, evaluated once per product they entered
    (2.1 of 25 ms of a profiled N = 200 realization, 0.45 ms written out). ``lax.optimization_barrier``
    does not do this: XLA's CPU pipeline removes it before fusion.
    """
    return jnp.sum(jnp.stack([x, jnp.zeros_like(x)]), axis=0)


def adjoint(a: Array) -> Array:
    """``a^dag`` over the last two axes as a row-major copy (see :func:`transposed`)."""
    return transposed(a).conj()


def _eigh_jvp(eigh, primals, tangents):
    """Textbook derivative of ``eigh`` (divides by eigenvalue gaps), computed with ``eigh`` itself."""
    (a,), (da,) = primals, tangents
    # Calling the differentiable ``eigh`` (not a bare callback) keeps the rule differentiable:
    # differentiating it again (a second derivative) applies this rule again. It does not help where
    # JAX has already replaced a custom_jvp by its primal (forward over reverse through a loop).
    w, v = eigh(a)
    da = hermitian_part(da)
    vdag_da_v = adjoint(v) @ da @ v
    dw = jnp.real(jnp.diagonal(vdag_da_v, axis1=-2, axis2=-1))
    n = a.shape[-1]
    eye = jnp.eye(n, dtype=w.dtype)
    gaps = w[..., None, :] - w[..., :, None]
    f = jnp.where(eye > 0, 0.0, 1.0 / jnp.where(eye > 0, 1.0, gaps))
    dv = v @ (f.astype(vdag_da_v.dtype) * vdag_da_v)
    return (w, v), (dw.astype(w.dtype), dv)


@jax.custom_jvp
def _host_eigh_batched(a: Array) -> tuple[Array, Array]:
    # LAPACK reads one triangle; symmetrize as jnp.linalg.eigh does, so results match it.
    a = hermitian_part(a)
    out = (jax.ShapeDtypeStruct(a.shape[:-1], jnp.finfo(a.dtype).dtype), jax.ShapeDtypeStruct(a.shape, a.dtype))
    return jax.pure_callback(_host_eigh, out, a, vmap_method="broadcast_all")


_host_eigh_batched.defjvp(functools.partial(_eigh_jvp, _host_eigh_batched))


def _callbacks_safe() -> bool:
    """Whether a host callback may be used: not when the process has several CPU devices.

    ``pure_callback`` first copies its operands to the *first* CPU device. With several local CPU
    devices (``--xla_force_host_platform_device_count``) a callback running inside another
    device's computation waits for that copy forever (observed with jax/jaxlib 0.10.2 under
    ``shard_map`` on 2 host devices: every thread idle, the callbacks blocked in ``np.asarray``).
    Such processes loop over single matrices with XLA's kernels instead.
    """
    return jax.local_device_count("cpu") < 2


def _batched_operand(axis_size, in_batched, a):
    """The operand of a ``custom_vmap`` rule with the batch axis in front (broadcast if unbatched)."""
    (batched,) = in_batched
    return a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape)


def _batching_rule(axis_size, in_batched, a):
    a = _batched_operand(axis_size, in_batched, a)
    if not _callbacks_safe():
        # A loop whose body calls this custom_vmap function again: an enclosing vmap lands here too,
        # so XLA's kernel never sees a batch.
        return jax.lax.map(_eigh_cpu_primal, a), (True, True)
    return _host_eigh_batched(a), (True, True)


@jax.custom_batching.custom_vmap
def _eigh_cpu_primal(a: Array) -> tuple[Array, Array]:
    # One matrix: XLA's own kernel (no batch to split, so no deadlock; no callback overhead).
    w, v = jnp.linalg.eigh(a)
    return w, v


_eigh_cpu_primal.def_vmap(_batching_rule)


@jax.custom_jvp
def _eigh_cpu(a: Array) -> tuple[Array, Array]:
    return _eigh_cpu_primal(a)


_eigh_cpu.defjvp(functools.partial(_eigh_jvp, _eigh_cpu))


# Small matrices are not worth dispatching to threads (threshold chosen, not tuned).
_THREADED_MIN_DIM = 32
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def host_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _loaded_blas() -> tuple:
    # NumPy (whose LAPACK the host paths call) is imported with this module, so its BLAS is among
    # the libraries loaded now; the counts are read live from these controllers.
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


def blas_threads() -> int | None:
    """Threads per call of the BLAS libraries NumPy's LAPACK may run on (the largest), as set now
    (``OPENBLAS_NUM_THREADS`` at start-up, or ``threadpoolctl`` since); ``None`` if unknown."""
    libs = _loaded_blas()
    if libs:
        return max(lib.num_threads for lib in libs)
    pinned = os.environ.get("OPENBLAS_NUM_THREADS", os.environ.get("OMP_NUM_THREADS"))
    return 1 if pinned is not None and pinned.strip() == "1" else None


def _host_workers() -> int:
    """Host threads for a batch of eigenvalue problems: the usable cores if BLAS runs one thread
    per call, else 1 (a multithreaded OpenBLAS called from several threads at once runs slower than
    one call: measured 0.77 s vs 0.64 s for 100 complex 200 x 200 matrices on 2 cores, against
    0.20 s for two threads over a single-threaded OpenBLAS)."""
    return host_cores() if blas_threads() == 1 else 1


_hinted = False


def hint_blas_threads(dim: int, batch: int) -> None:
    """Warn once per process when a batch of ``dim x dim`` eigendecompositions on the CPU cannot be
    spread over the cores because BLAS runs several threads per call.

    Only the user can fix it: OpenBLAS takes its thread count from the thread that first sets it,
    and qep_jax's LAPACK calls run on XLA's threads, so a limit set there is not reliable.
    """
    global _hinted
    if _hinted or batch < 2 or dim < _THREADED_MIN_DIM or not _on_cpu() or not _callbacks_safe():
        return
    cores, threads = host_cores(), blas_threads()
    if cores < 2 or threads in (None, 1):
        return
    _hinted = True
    warnings.warn(
        f"qep_jax: BLAS runs {threads} threads per LAPACK call, so batches of eigendecompositions "
        f"are not spread over the {cores} cores. Set OPENBLAS_NUM_THREADS=1 (MKL_NUM_THREADS=1 for "
        "MKL) before Python starts "
        "(or call threadpoolctl.threadpool_limits(1, 'blas') on the main thread): SpinGORM.simulate "
        "at N = 200 then ran 1.5x faster on 2 cores (the qep-jax command does this itself).",
        stacklevel=3,
    )


def batch_eigh_workers(dim: int) -> int:
    """Host threads a batched CPU eigendecomposition of ``dim x dim`` matrices is split over (1: none)."""
    if dim < _THREADED_MIN_DIM or not _callbacks_safe():
        return 1
    return _host_workers()


def _host_map(fun, a: np.ndarray):
    """``fun`` over a batch ``(B, n, n)``, split over the host threads when that pays."""
    global _pool
    workers = min(_host_workers(), a.shape[0])
    if workers < 2 or a.shape[-1] < _THREADED_MIN_DIM:
        return fun(a)
    with _pool_lock:  # callbacks may run concurrently on XLA's threads
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(_host_workers(), thread_name_prefix="qep_eigh")
    # NumPy releases the GIL inside LAPACK, so independent matrices run in parallel.
    parts = list(_pool.map(fun, np.array_split(a, workers)))
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return tuple(np.concatenate(p) for p in zip(*parts))


def _finite_batch(a: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(B, n, n)`` with non-finite matrices zeroed, and the mask of those matrices (None if none).

    NumPy raises LinAlgError on a NaN matrix, which ended a jitted run with an INTERNAL error
    naming no argument; XLA's own eigh returns NaN, and so do these callbacks now.
    """
    bad = ~np.isfinite(a).all(axis=(-2, -1))
    if not bad.any():
        return a, None
    a = a.copy()
    a[bad] = 0.0
    return a, bad


def _host_eigvalsh(a) -> np.ndarray:
    """NumPy's ``eigvalsh`` (LAPACK ``?heevd``/``?syevd`` with ``jobz='N'``), batches split over cores."""
    a = np.asarray(a)
    flat, bad = _finite_batch(a.reshape((-1,) + a.shape[-2:]))
    out = _host_map(np.linalg.eigvalsh, flat)
    if bad is not None:
        out[bad] = np.nan
    return out.astype(np.finfo(a.dtype).dtype, copy=False).reshape(a.shape[:-1])


def _host_eigh(a) -> tuple[np.ndarray, np.ndarray]:
    """NumPy's ``eigh`` (LAPACK ``?heevd``/``?syevd``), batches split over cores."""
    a = np.asarray(a)
    flat, bad = _finite_batch(a.reshape((-1,) + a.shape[-2:]))
    w, v = _host_map(np.linalg.eigh, flat)
    if bad is not None:
        w[bad] = np.nan
        v[bad] = np.nan
    return (w.astype(np.finfo(a.dtype).dtype, copy=False).reshape(a.shape[:-1]),
            v.astype(a.dtype, copy=False).reshape(a.shape))


@jax.custom_batching.custom_vmap
def _eigvalsh_xla(a: Array) -> Array:
    # Several CPU devices (no callbacks): one matrix at a time with XLA's kernel, as in _batching_rule.
    return jnp.linalg.eigvalsh(a)


def _eigvalsh_xla_batching_rule(axis_size, in_batched, a):
    return jax.lax.map(_eigvalsh_xla, _batched_operand(axis_size, in_batched, a)), True


_eigvalsh_xla.def_vmap(_eigvalsh_xla_batching_rule)


def _eigvalsh_2x2(a: Array) -> Array:
    """Eigenvalues ``m -+ hypot((a_00 - a_11)/2, |a_01|)``, ``m`` the mean of the diagonal.

    Elementwise, so a batch of qubit states (the system entropy at every time point) costs no
    callback: the host call for 200 of them took 0.8 ms. The error is the ``eps ||a||`` of LAPACK.
    """
    a = hermitian_part(a)
    p, q = jnp.real(a[..., 0, 0]), jnp.real(a[..., 1, 1])
    r = jnp.hypot((p - q) / 2, jnp.abs(a[..., 0, 1]))
    m = (p + q) / 2
    return jnp.stack([m - r, m + r], axis=-1)


def _eigvalsh_cpu_primal(a: Array) -> Array:
    if a.shape[-1] == 2:
        return _eigvalsh_2x2(a)
    if not _callbacks_safe():
        return _eigvalsh_xla(a)
    # jnp.linalg.eigvalsh computes the eigenvectors and drops them: twice the work of jobz='N',
    # which jaxlib does not expose.
    return _host_eigvalsh_call(a)


def _eigvalsh_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = _flat_vmap(_eigh_cpu, a)  # differentiable, as in _eigh_jvp
    da = hermitian_part(da)
    dw = diagonal_in_basis(v, da)
    return w, dw.astype(w.dtype)


@jax.custom_jvp
def _host_eigvalsh_call(a: Array) -> Array:
    # LAPACK reads one triangle; symmetrize as jnp.linalg.eigvalsh does, so values match it.
    a = hermitian_part(a)
    out = jax.ShapeDtypeStruct(a.shape[:-1], jnp.finfo(a.dtype).dtype)
    return jax.pure_callback(_host_eigvalsh, out, a, vmap_method="broadcast_all")


_host_eigvalsh_call.defjvp(_eigvalsh_jvp)


@jax.custom_jvp
def _eigvalsh_cpu(a: Array) -> Array:
    return _eigvalsh_cpu_primal(a)


_eigvalsh_cpu.defjvp(_eigvalsh_jvp)


def _flat_vmap(fun, a):
    batch = a.shape[:-2]
    if not batch:
        return fun(a)
    out = jax.vmap(fun)(a.reshape((-1,) + a.shape[-2:]))
    return jax.tree.map(lambda x: x.reshape(batch + x.shape[1:]), out)


def _inexact(a) -> Array:
    """``a`` as a float (or complex) array: for integer entries the symmetrization ``(a + a^dag) / 2``
    wraps around (int8), for bool ``+`` is OR; both gave wrong eigenvalues."""
    a = jnp.asarray(a)
    return a if jnp.issubdtype(a.dtype, jnp.inexact) else a.astype(jnp.result_type(a.dtype, float))


def eigh(a: Array) -> tuple[Array, Array]:
    """``(eigenvalues ascending (..., n), eigenvectors (..., n, n))`` of Hermitian ``a`` ``(..., n, n)``;
    integer entries are promoted to the float type."""
    a = _inexact(a)
    if not _on_cpu():
        return jnp.linalg.eigh(a)
    return _flat_vmap(_eigh_cpu, a)


def eigvalsh(a: Array) -> Array:
    """Eigenvalues ``(..., n)`` ascending of Hermitian ``a`` ``(..., n, n)``; see :func:`eigh`."""
    a = _inexact(a)
    if not _on_cpu():
        return jnp.linalg.eigvalsh(a)
    return _flat_vmap(_eigvalsh_cpu, a)
