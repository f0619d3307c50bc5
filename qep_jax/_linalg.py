"""Hermitian eigendecomposition that never issues concurrent batched LAPACK calls on the CPU.

jaxlib 0.10's CPU ``eigh`` kernel splits a *batched* call over XLA's intra-op thread pool and
waits for the pieces from inside a pool thread. When two such calls run at the same time (XLA runs
independent operations concurrently, and ``vmap``/``lax.map(batch_size=)`` batch every ``eigh`` in
our kernels) on a machine with few cores, both pool threads wait on each other forever: the
process hangs with every thread idle (observed here on 2 cores: gdb shows both ``tf_XLAEigen``
threads in ``jax::ParallelBatchMap`` under ``lapack_zheevd_ffi``). On the CPU this module therefore
batches ``eigh`` as a sequential ``lax.map`` of single-matrix calls (LAPACK is single-threaded per
matrix either way); on GPU/TPU the native batched solver is used unchanged.

Derivatives: the JVP is the textbook one (``dE = diag(W^dag dA W)``, eigenvector term with
``1/(E_j - E_i)``), as in ``jnp.linalg.eigh``; callers that need correct derivatives at
degeneracies wrap their own Daleckii-Krein rules around this function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _sequential_batching_rule(axis_size, in_batched, a):
    (batched,) = in_batched
    if not batched:
        a = jnp.broadcast_to(a, (axis_size,) + a.shape)
    out = jax.lax.map(_eigh_cpu_primal, a)
    return out, (True, True)


@jax.custom_batching.custom_vmap
def _eigh_cpu_primal(a: Array) -> tuple[Array, Array]:
    w, v = jnp.linalg.eigh(a)
    return w, v


_eigh_cpu_primal.def_vmap(_sequential_batching_rule)


@jax.custom_jvp
def _eigh_cpu(a: Array) -> tuple[Array, Array]:
    return _eigh_cpu_primal(a)


@_eigh_cpu.defjvp
def _eigh_cpu_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = _eigh_cpu_primal(a)
    da = (da + jnp.swapaxes(da, -1, -2).conj()) / 2
    vdag_da_v = jnp.swapaxes(v, -1, -2).conj() @ da @ v
    dw = jnp.real(jnp.diagonal(vdag_da_v, axis1=-2, axis2=-1))
    n = a.shape[-1]
    eye = jnp.eye(n, dtype=w.dtype)
    gaps = w[..., None, :] - w[..., :, None]
    f = jnp.where(eye > 0, 0.0, 1.0 / jnp.where(eye > 0, 1.0, gaps))
    dv = v @ (f.astype(vdag_da_v.dtype) * vdag_da_v)
    return (w, v), (dw.astype(w.dtype), dv)


@jax.custom_batching.custom_vmap
def _eigvalsh_cpu_primal(a: Array) -> Array:
    return jnp.linalg.eigvalsh(a)


def _sequential_eigvalsh_rule(axis_size, in_batched, a):
    (batched,) = in_batched
    if not batched:
        a = jnp.broadcast_to(a, (axis_size,) + a.shape)
    return jax.lax.map(_eigvalsh_cpu_primal, a), True


_eigvalsh_cpu_primal.def_vmap(_sequential_eigvalsh_rule)


@jax.custom_jvp
def _eigvalsh_cpu(a: Array) -> Array:
    return _eigvalsh_cpu_primal(a)


@_eigvalsh_cpu.defjvp
def _eigvalsh_cpu_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = _eigh_cpu_primal(a)
    da = (da + jnp.swapaxes(da, -1, -2).conj()) / 2
    dw = jnp.real(jnp.einsum("...ji,...jk,...ki->...i", v.conj(), da, v))
    return w, dw.astype(w.dtype)


def _flat_vmap(fun, a):
    batch = a.shape[:-2]
    if not batch:
        return fun(a)
    out = jax.vmap(fun)(a.reshape((-1,) + a.shape[-2:]))
    return jax.tree.map(lambda x: x.reshape(batch + x.shape[1:]), out)


def eigh(a: Array) -> tuple[Array, Array]:
    """``(eigenvalues ascending (..., n), eigenvectors (..., n, n))`` of Hermitian ``a`` ``(..., n, n)``."""
    if not _on_cpu():
        return jnp.linalg.eigh(a)
    return _flat_vmap(_eigh_cpu, a)


def eigvalsh(a: Array) -> Array:
    """Eigenvalues ``(..., n)`` ascending of Hermitian ``a`` ``(..., n, n)``; see :func:`eigh`."""
    if not _on_cpu():
        return jnp.linalg.eigvalsh(a)
    return _flat_vmap(_eigvalsh_cpu, a)
